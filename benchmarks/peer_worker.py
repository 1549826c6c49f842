"""One worker process of the peer benchmark (:mod:`benchmarks.peer`).

It runs under *either* interpreter: the project's own (``--lib nautilus``) or the peer's
virtual environment (``--lib kademlia``, bmuller/kademlia 2.2.3, which has neither this
project nor its dependencies installed). So it imports only the standard library and the one
library it measures, and drives that library through its public API alone. Each scenario runs
in a fresh process so that memory and CPU of one library never colour the other's numbers.

Scenarios (``--scenario``):

* ``network``: N nodes in this process, each joining through 3 random earlier nodes; then
  sequential and concurrent puts and gets from random nodes; then gets right after 30% and
  then 50% of the nodes were stopped abruptly. Memory per node is RSS growth over the nodes.
* ``server``: one node whose table is filled by ``--fillers`` other nodes (in this process);
  prints ``READY host port`` and serves until its standard input closes.
* ``client``: one node of the same library that PINGs (or sends FIND_NODE to) the server
  with ``--window`` requests in flight for ``--duration`` seconds, and counts the answers.

The result is one JSON object on the last line of standard output.

``--unsigned-experiment`` (nautilus-kad only) replaces Ed25519 in this worker's process with a
keyed BLAKE2b tag (about 2 µs), as the simulator does: it measures what a join or a get would
cost if signatures were free. It is an experiment on the benchmark, not a mode of the product,
which signs or seals every datagram it sends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

HOST = "127.0.0.1"
OP_TIMEOUT = 30.0
"""No single operation may take longer (the peer's RPC timeout is 5 s; lookups chain them)."""


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# --- the two libraries behind one small interface ---------------------------------------------


class Library:
    """What the scenarios need of a DHT library: its public API, nothing else."""

    name = ""

    async def start(self, seeds: list[tuple[str, int]]) -> Any:
        raise NotImplementedError

    def address(self, node: Any) -> tuple[str, int]:
        raise NotImplementedError

    async def put(self, node: Any, key: bytes, value: bytes) -> bool:
        raise NotImplementedError

    async def get(self, node: Any, key: bytes) -> bytes | None:
        raise NotImplementedError

    async def stop(self, node: Any) -> None:
        raise NotImplementedError

    async def ping(self, node: Any, address: tuple[str, int]) -> bool:
        raise NotImplementedError

    async def find_node(self, node: Any, address: tuple[str, int], target: bytes) -> int:
        """Ask one peer for the contacts closest to ``target``: how many it returned."""
        raise NotImplementedError

    def datagrams_sent(self, nodes: list[Any]) -> int:
        raise NotImplementedError

    def table_size(self, node: Any) -> int:
        raise NotImplementedError


class Nautilus(Library):
    name = "nautilus-kad"

    def __init__(self) -> None:
        import nautilus_kad  # noqa: PLC0415

        self.kad = nautilus_kad

    async def start(self, seeds: list[tuple[str, int]]) -> Any:
        return await self.kad.Node.start(HOST, 0, seeds)

    def address(self, node: Any) -> tuple[str, int]:
        return tuple(node.address)  # type: ignore[return-value]

    async def put(self, node: Any, key: bytes, value: bytes) -> bool:
        result = await node.put(key, value)
        return bool(result.acks)

    async def get(self, node: Any, key: bytes) -> bytes | None:
        return await node.get(key)  # type: ignore[no-any-return]

    async def stop(self, node: Any) -> None:
        await node.stop(handoff=False)  # abrupt, as a crash: the peer has no hand-off either

    async def ping(self, node: Any, address: tuple[str, int]) -> bool:
        await node.ping(address)
        return True

    async def find_node(self, node: Any, address: tuple[str, int], target: bytes) -> int:
        contacts = await node.find_node_at(address, int.from_bytes(target, "big"))
        return len(contacts)

    def datagrams_sent(self, nodes: list[Any]) -> int:
        return sum(int(n.engine.stats.get("tx.datagrams", 0)) for n in nodes)

    def table_size(self, node: Any) -> int:
        return len(node.routing_table)


class Kademlia(Library):
    """bmuller/kademlia: ``Server.listen/bootstrap/set/get/stop``; single RPCs through its
    protocol object (``server.protocol.ping(address, own_id)`` and ``find_node``), the way its
    own ``bootstrap_node`` and ``call_find_node`` make them."""

    name = "kademlia"

    def __init__(self) -> None:
        import kademlia.network  # noqa: PLC0415

        self.kad = kademlia.network
        self.sent = 0

    async def start(self, seeds: list[tuple[str, int]]) -> Any:
        server = self.kad.Server()
        await server.listen(0, HOST)
        transport = server.transport
        send = transport.sendto

        def counting_sendto(data: bytes, addr: Any = None) -> None:
            self.sent += 1
            send(data, addr)

        transport.sendto = counting_sendto  # count datagrams (the peer keeps no counter)
        if seeds:
            await server.bootstrap(seeds)
        return server

    def address(self, node: Any) -> tuple[str, int]:
        host, port = node.transport.get_extra_info("sockname")[:2]
        return (host, port)

    async def put(self, node: Any, key: bytes, value: bytes) -> bool:
        return bool(await node.set(key, value))

    async def get(self, node: Any, key: bytes) -> bytes | None:
        return await node.get(key)  # type: ignore[no-any-return]

    async def stop(self, node: Any) -> None:
        node.stop()

    async def ping(self, node: Any, address: tuple[str, int]) -> bool:
        ok, _ = await node.protocol.ping(address, node.node.id)
        return bool(ok)

    async def find_node(self, node: Any, address: tuple[str, int], target: bytes) -> int:
        ok, contacts = await node.protocol.find_node(address, node.node.id, target[:20])
        return len(contacts) if ok else -1

    def datagrams_sent(self, nodes: list[Any]) -> int:
        return self.sent

    def table_size(self, node: Any) -> int:
        return sum(len(b) for b in node.protocol.router.buckets)


LIBRARIES: dict[str, Callable[[], Library]] = {"nautilus": Nautilus, "kademlia": Kademlia}


# --- measuring ---------------------------------------------------------------------------------


class Ops:
    """Latencies and outcomes of one kind of operation."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.ok = 0
        self.failed = 0
        self.wall = 0.0

    async def timed(self, op: Awaitable[bool]) -> None:
        start = time.perf_counter()
        try:
            ok = await asyncio.wait_for(op, OP_TIMEOUT)
        except Exception:  # the library's errors and timeouts alike: a failed operation
            ok = False
        self.samples.append(time.perf_counter() - start)
        if ok:
            self.ok += 1
        else:
            self.failed += 1

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)

        def pct(q: float) -> float:
            if not ordered:
                return float("nan")
            return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3

        count = self.ok + self.failed
        return {
            "count": count,
            "ok": self.ok,
            "p50_ms": pct(0.5),
            "p90_ms": pct(0.9),
            "p99_ms": pct(0.99),
            "success": self.ok / count if count else float("nan"),
            "per_second": count / self.wall if self.wall else float("nan"),
        }


async def run_ops(
    count: int, window: int, make: Callable[[int], Awaitable[bool]], into: Ops
) -> None:
    """``count`` operations, at most ``window`` at a time (1: sequential)."""
    start = time.perf_counter()
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await into.timed(make(index))

    await asyncio.gather(*(lane() for _ in range(max(1, window))))
    into.wall = time.perf_counter() - start


async def scenario_network(lib: Library, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    nodes: list[Any] = []
    out: dict[str, Any] = {"library": lib.name, "nodes": args.nodes}
    gc.collect()
    rss_before = rss_bytes()
    joins: list[float] = []
    join_datagrams: list[int] = []
    try:
        start = time.perf_counter()
        for i in range(args.nodes):
            earlier = [lib.address(n) for n in rng.sample(nodes, min(3, len(nodes)))]
            sent = lib.datagrams_sent(nodes)
            t0 = time.perf_counter()
            node = await asyncio.wait_for(lib.start(earlier), OP_TIMEOUT)
            if i:
                joins.append(time.perf_counter() - t0)
            nodes.append(node)
            if i:
                join_datagrams.append(lib.datagrams_sent(nodes) - sent)
        out["formation_s"] = time.perf_counter() - start
        joins.sort()
        out["join_p50_ms"] = joins[len(joins) // 2] * 1e3 if joins else float("nan")
        out["join_p90_ms"] = joins[int(len(joins) * 0.9)] * 1e3 if joins else float("nan")
        out["datagrams_per_join"] = sum(join_datagrams) / max(1, len(join_datagrams))
        await asyncio.sleep(0.5)  # answers still in flight settle
        out["mean_table"] = sum(lib.table_size(n) for n in nodes) / len(nodes)
        gc.collect()
        out["rss_per_node_joined"] = (rss_bytes() - rss_before) / args.nodes

        values: dict[bytes, bytes] = {}

        def put(_: int) -> Awaitable[bool]:
            key = f"peer-bench-{args.seed}-{len(values)}".encode()
            value = rng.randbytes(rng.randrange(16, 512))
            values[key] = value
            return lib.put(rng.choice(nodes), key, value)

        async def checked_get(node: Any, key: bytes) -> bool:
            return await lib.get(node, key) == values[key]

        def get_from(pool: list[Any]) -> Callable[[int], Awaitable[bool]]:
            keys = list(values)
            return lambda _: checked_get(rng.choice(pool), rng.choice(keys))

        phases: dict[str, Ops] = {}
        for name, window in (("seq", 1), ("conc", args.window)):
            phases[f"put_{name}"] = Ops()
            await run_ops(args.puts, window, put, phases[f"put_{name}"])
            phases[f"get_{name}"] = Ops()
            await run_ops(args.gets, window, get_from(nodes), phases[f"get_{name}"])
        gc.collect()
        out["rss_per_node_worked"] = (rss_bytes() - rss_before) / args.nodes

        alive = list(range(len(nodes)))
        for share in (0.3, 0.5):
            target_dead = round(len(nodes) * share)
            to_kill = target_dead - (len(nodes) - len(alive))
            rng.shuffle(alive)
            for index in alive[:to_kill]:
                await lib.stop(nodes[index])
            alive = alive[to_kill:]
            survivors = [nodes[i] for i in alive]
            phase = Ops()
            await run_ops(args.kill_gets, args.kill_window, get_from(survivors), phase)
            phases[f"get_after_{round(share * 100)}"] = phase
        out["phases"] = {name: ops.summary() for name, ops in phases.items()}
        return out
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                await lib.stop(node)


async def scenario_server(lib: Library, args: argparse.Namespace) -> dict[str, Any]:
    server = await lib.start([])
    fillers = []
    for _ in range(args.fillers):
        fillers.append(await asyncio.wait_for(lib.start([lib.address(server)]), OP_TIMEOUT))
    await asyncio.sleep(0.5)
    host, port = lib.address(server)
    print(f"READY {host} {port} {lib.table_size(server)}", flush=True)
    cpu = time.process_time()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # serve until the parent closes stdin
    cpu = time.process_time() - cpu
    for node in [server, *fillers]:
        await lib.stop(node)
    return {"library": lib.name, "table": lib.table_size(server), "server_cpu_s": cpu}


async def scenario_client(lib: Library, args: argparse.Namespace) -> dict[str, Any]:
    server = (args.server_host, args.server_port)
    client = await lib.start([])
    rng = random.Random(args.seed)
    answered = 0
    failed = 0
    contacts = 0
    measuring = False
    try:

        async def request() -> int:
            if args.kind == "PING":
                return 1 if await lib.ping(client, server) else -1
            return await lib.find_node(client, server, rng.randbytes(32))

        for _ in range(3):  # first contact (and, where there are any, session set-up)
            await asyncio.wait_for(request(), OP_TIMEOUT)

        async def lane(stop_at: float) -> None:
            nonlocal answered, failed, contacts
            while time.perf_counter() < stop_at:
                try:
                    got = await asyncio.wait_for(request(), 5)
                except Exception:
                    got = -1
                if not measuring:
                    continue
                if got < 0:
                    failed += 1
                else:
                    answered += 1
                    contacts += got

        start = time.perf_counter()
        end = start + args.warmup + args.duration
        lanes = asyncio.gather(*(lane(end) for _ in range(args.window)))
        await asyncio.sleep(args.warmup)
        measuring = True
        cpu = time.process_time()
        t0 = time.perf_counter()
        await lanes
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu
    finally:
        await lib.stop(client)
    return {
        "library": lib.name,
        "kind": args.kind,
        "answered": answered,
        "failed": failed,
        "per_second": answered / wall,
        "client_cpu_s": cpu,
        "mean_contacts": contacts / answered if answered else 0.0,
    }


SCENARIOS = {"network": scenario_network, "server": scenario_server, "client": scenario_client}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=sorted(LIBRARIES), required=True)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--puts", type=int, default=100)
    parser.add_argument("--gets", type=int, default=300)
    parser.add_argument("--window", type=int, default=20, help="concurrent operations")
    parser.add_argument("--kill-gets", type=int, default=60)
    parser.add_argument("--kill-window", type=int, default=20)
    parser.add_argument("--fillers", type=int, default=40)
    parser.add_argument("--server-host", default=HOST)
    parser.add_argument("--server-port", type=int, default=0)
    parser.add_argument("--kind", choices=("PING", "FIND_NODE"), default="PING")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--unsigned-experiment",
        action="store_true",
        help="nautilus-kad only: Ed25519 replaced by a keyed hash in this process",
    )
    args = parser.parse_args(argv)
    if args.unsigned_experiment and args.lib != "nautilus":
        parser.error("--unsigned-experiment applies to --lib nautilus only")
    return args


def free_signatures() -> None:
    """Replace Ed25519 in nautilus-kad's authenticator, for this process only, by a keyed
    BLAKE2b tag of the sender's public key and the payload (the simulator's stand-in): the
    framing, the checks and the id derivation stay; only the signature's cost goes."""
    import hashlib  # noqa: PLC0415

    from nautilus_kad.core import auth  # noqa: PLC0415
    from nautilus_kad.core.identity import node_id_for  # noqa: PLC0415

    base = hashlib.blake2b(digest_size=64, key=os.urandom(32))

    def sign(self: Any, payload: bytes) -> bytes:
        tag = base.copy()
        tag.update(self.identity.public_key)
        tag.update(payload)
        return tag.digest()

    def verify(self: Any, public_key: bytes, payload: bytes, signature: bytes) -> Any:
        tag = base.copy()
        tag.update(public_key)
        tag.update(payload)
        return node_id_for(public_key) if tag.digest() == signature else None

    auth.Authenticator.sign = sign  # type: ignore[method-assign]
    auth.Authenticator.verify = verify  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.disable(logging.CRITICAL)  # the peer logs every timeout at WARNING: not measured
    lib = LIBRARIES[args.lib]()
    if args.unsigned_experiment:
        free_signatures()
    random.seed(args.seed)  # the peer draws its node ids from the global generator
    factory = None
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(SCENARIOS[args.scenario](lib, args))
    result["loop"] = args.loop
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
