"""A node for the NAT lab, driven line by line: ``python -m tests.natpeer`` inside a lab host.

It starts a :class:`~nautilus_kad.Node` (server or client mode, timers scaled like the lab's
NATs), echoes every channel peers open to it, and answers commands on stdin with one JSON
line each on stdout:

* ``connect NODE_ID TRIES TIMEOUT`` — ``TRIES`` connects in a row to ``NODE_ID``; for each,
  ``{"path", "took", "echoed", "code", "upgraded"}``: the first path, the seconds from the
  call to the channel, whether the echo of a datagram came back, the failure code, and
  whether a relayed channel turned direct within the ``--upgrade-wait``;
* ``hold NODE_ID SECONDS`` — one connect, then a datagram every 0.1 s for ``SECONDS``
  while printing ``{"event": "open", "path"}`` when the channel opens and
  ``{"event": "direct"}`` when a relayed one turns direct, then ``{"sent", "echoed",
  "echoed_direct"}`` (echoes that came back after the path became direct);
* ``status`` — ``{"registered", "nat_class", "stats"}`` (``nat.punch.*``, ``relay.*``,
  ``rendezvous.*``, ``connect.*``, ``channel.*``);
* ``quit``.

The first line it prints is ``{"ready": NODE_ID}``. The initiator side of the lab tests and
of benchmarks/nat_pairs.py: one process makes many connects, so each is timed from the
call, not from a process start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import replace

from nautilus_kad import ChannelClosedError, ConnectError, KadConfig, Node
from nautilus_kad.aio.channels import echo_channels

STAT_PREFIXES = ("nat.punch.", "relay.", "rendezvous.", "connect.", "channel.")


def config_for(
    timescale: float, keepalive: float | None = None, upgrade_interval: float | None = None
) -> KadConfig:
    """The lab's configuration: NAT and traversal timers scaled; ``keepalive`` (seconds,
    after scaling) overrides the rendezvous keepalive (a huge value: none in practice),
    ``upgrade_interval`` the retries of a direct path while relayed."""
    base = KadConfig()
    traversal = base.traversal.scaled(timescale)
    if keepalive is not None:
        traversal = replace(traversal, keepalive=keepalive, lease=max(traversal.lease, keepalive))
    if upgrade_interval is not None:
        traversal = replace(traversal, upgrade_interval=upgrade_interval)
    return base.with_changes(nat=base.nat.scaled(timescale), traversal=traversal)


async def one_connect(node: Node, target: bytes, timeout: float, upgrade_wait: float) -> dict[
    str, object
]:  # fmt: skip
    started = time.monotonic()
    try:
        channel = await node.connect(target, timeout=timeout)
    except ConnectError as exc:
        return {"path": "failed", "code": exc.code, "took": time.monotonic() - started}
    took = time.monotonic() - started
    path = channel.path
    echoed = upgraded = False
    closed = None
    try:
        for i in range(5):  # a datagram or its echo may be lost (the loss cells): try five
            payload = f"echo-{i}-{started}".encode()
            await channel.send(payload)
            try:
                answer = await asyncio.wait_for(channel.recv(), 1.0)
            except TimeoutError:
                continue
            if answer == payload:
                echoed = True
                break
        if path == "relayed" and upgrade_wait > 0:
            deadline = time.monotonic() + upgrade_wait
            while time.monotonic() < deadline and channel.path == "relayed":
                await asyncio.sleep(0.05)
            upgraded = channel.path == "direct"
    except ChannelClosedError as exc:  # the peer or the relay ended it under us
        closed = str(exc)
    finally:
        await channel.close()
    return {"path": path, "took": took, "echoed": echoed, "code": closed, "upgraded": upgraded}


async def hold(node: Node, target: bytes, seconds: float) -> None:
    try:
        channel = await node.connect(target, timeout=10.0)
    except ConnectError as exc:
        print(json.dumps({"event": "failed", "code": exc.code}), flush=True)
        return
    print(json.dumps({"event": "open", "path": channel.path}), flush=True)
    sent = echoed = echoed_direct = 0
    direct = channel.path == "direct"
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not channel.closed:
            # Paced, as the docstring says: sending again as soon as the echo was back
            # (about 1 700 a second) used up a relay circuit's 128 KiB in about 2 s, and
            # when the machine was slow to open the direct path the relay ended the circuit
            # first: the "never upgrades" the upgrade test used to retry.
            tick = time.monotonic() + 0.1
            await channel.send(b"hold-%d" % sent)
            sent += 1
            with contextlib.suppress(TimeoutError, ChannelClosedError):
                await asyncio.wait_for(channel.recv(), 0.1)
                echoed += 1
                echoed_direct += direct
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            if not direct and channel.path == "direct":
                direct = True
                print(json.dumps({"event": "direct"}), flush=True)
    finally:
        await channel.close()
    print(json.dumps({"sent": sent, "echoed": echoed, "echoed_direct": echoed_direct}),
          flush=True)  # fmt: skip


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=7400)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--timescale", type=float, default=0.05)
    parser.add_argument("--keepalive", type=float)
    parser.add_argument("--upgrade-wait", type=float, default=0.0)
    parser.add_argument("--upgrade-interval", type=float, help="seconds (after scaling)")
    args = parser.parse_args(argv)
    bootstrap = [(b.split(":")[0], int(b.split(":")[1])) for b in args.bootstrap]
    node = await Node.start(
        args.host, args.port, bootstrap,
        config=config_for(args.timescale, args.keepalive, args.upgrade_interval),
        client_mode=args.client,
    )  # fmt: skip
    echo = asyncio.create_task(echo_channels(node.incoming()))
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": node.node_id.to_bytes32().hex()}), flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "quit":
                break
            if words[0] == "connect":
                target, tries, timeout = bytes.fromhex(words[1]), int(words[2]), float(words[3])
                for _ in range(tries):
                    result = await one_connect(node, target, timeout, args.upgrade_wait)
                    print(json.dumps(result), flush=True)
            elif words[0] == "hold":
                await hold(node, bytes.fromhex(words[1]), float(words[2]))
            elif words[0] == "status":
                engine = node.engine
                stats = {k: v for k, v in engine.stats.items() if k.startswith(STAT_PREFIXES)}
                print(json.dumps({
                    "registered": len(engine.traversal.registrar.registered()),
                    "nat_class": engine.natlink.nat_class(),
                    "stats": stats,
                }), flush=True)  # fmt: skip
    finally:
        echo.cancel()
        await node.stop()


if __name__ == "__main__":
    asyncio.run(main())
