"""The daemon operators run: a node plus a local HTTP API, Prometheus metrics and a live page.

Only :mod:`.apifile` and :mod:`.client` are imported by the command line's client commands:
they use the standard library alone, so ``nautilus-kad get`` stays quick to start. The server
side (:mod:`.server` and what it pulls in) imports aiohttp and prometheus-client.
"""
