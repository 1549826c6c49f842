"""The daemon's local API: what a request costs, and whether scraping slows the node.

    python -m benchmarks.daemon_api                   # 20 nodes, 200 requests per endpoint
    python -m benchmarks.daemon_api --nodes 50 --requests 500

A loopback network runs on an event loop in a background thread (one node of it has the
daemon's API); this thread is the client, with the standard library's ``http.client`` as the
command line uses it. Prints, per endpoint, the p50/p99/max time of a request and the size of
the answer; then the UDP ping round trip from the daemon's node to a peer, alone and while
the client requests ``/metrics`` and ``/api/v1/routing-table`` back to back.

Benchmarks report; they never assert. ``--json PATH`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich.console import Console
from rich.table import Table

from nautilus_kad import Node
from nautilus_kad.daemon.server import Daemon
from nautilus_kad.sim.report import percentile

ENDPOINTS = ("/api/v1/version", "/api/v1/status", "/api/v1/routing-table", "/metrics", "/")


class Network:
    """Nodes and a daemon on a loop in a background thread."""

    def __init__(self, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes: list[Node] = []
        self.daemon: Daemon | None = None
        self.call(self._start(count))

    def call(self, coro: Any, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, count: int) -> None:
        self.nodes.append(await Node.start(port=0))
        for _ in range(count - 1):
            self.nodes.append(await Node.start(port=0, bootstrap=[self.nodes[0].address]))
        self.daemon = Daemon(self.nodes[-1])
        await self.daemon.start()
        for i in range(count):
            await self.nodes[i].put(f"bench-{i}".encode(), b"x" * 100)

    async def ping_rtts(self, count: int) -> list[float]:
        node, peer = self.nodes[-1], self.nodes[0]
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            await node.ping(peer.address)
            rtts.append((time.perf_counter() - t0) * 1000)
        return rtts

    def close(self) -> None:
        async def stop() -> None:
            assert self.daemon is not None
            await self.daemon.close()
            for node in self.nodes:
                await node.stop(handoff=False)

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    return len(response.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    net = Network(args.nodes)
    assert net.daemon is not None
    port = net.daemon.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    rows: dict[str, Any] = {}
    try:
        for path in ENDPOINTS:
            times, size = [], 0
            for _ in range(args.requests):
                t0 = time.perf_counter()
                size = _get(conn, path)
                times.append((time.perf_counter() - t0) * 1000)
            rows[path] = {
                "p50_ms": percentile(times, 50),
                "p99_ms": percentile(times, 99),
                "max_ms": max(times),
                "bytes": size,
            }
        alone = net.call(net.ping_rtts(args.requests))
        stop = threading.Event()

        def scrape() -> None:
            scraper = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            while not stop.is_set():
                _get(scraper, "/metrics")
                _get(scraper, "/api/v1/routing-table")
            scraper.close()

        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            loaded = net.call(net.ping_rtts(args.requests))
        finally:
            stop.set()
            scraper.join(30)
    finally:
        conn.close()
        net.close()
    table = Table(title=f"daemon API, {args.nodes} nodes, {args.requests} requests each")
    for column in ("request", "p50 ms", "p99 ms", "max ms", "bytes"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for path, row in rows.items():
        table.add_row(
            f"GET {path}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['max_ms']:.2f}",
            str(row["bytes"]),
        )
    for name, rtts in (("ping rtt, API idle", alone), ("ping rtt, API scraped", loaded)):
        rows[name] = {"p50_ms": statistics.median(rtts), "p99_ms": percentile(rtts, 99)}
        table.add_row(
            name,
            f"{statistics.median(rtts):.2f}",
            f"{percentile(rtts, 99):.2f}",
            f"{max(rtts):.2f}",
            "",
        )
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
