"""Memory per node, and where it goes.

    python -m benchmarks.memory                      # 200 real nodes on loopback
    python -m benchmarks.memory --nodes 1000
    python -m benchmarks.memory --sim 10000          # the simulator: N join, N lookups
    python -m benchmarks.memory --sim 1000 --json out.json

Real nodes: N ``Node``s in this process on loopback UDP, each joining through 3 random
earlier ones (the scenario of ``benchmarks.peer``); memory per node is the growth of the
process's RSS over the nodes, after a garbage collection. Simulator: the scenario of
``benchmarks/sim_scale.py`` (N nodes join, then N lookups, seed 1); memory per node is RSS
growth over N, and the peak RSS over N beside it (the issue's figure: 6 GiB / 100 000).

The breakdown walks each node's engine component by component and adds up
``sys.getsizeof`` of every object reachable from it that existed in no node before (each
object counted once, for the first component that reaches it, in the order of the table):
Python's own view (bound methods and closures made for a node included). Native memory
it cannot see is listed apart: live ChaCha20-Poly1305 contexts (2.3 KiB of OpenSSL state
each, measured), what rounding every object up to pymalloc's 16-byte blocks costs, and the
rest of the RSS (free blocks, the event loop's native handles, key objects, process-wide
caches). ``--detail`` splits a component into its attributes; ``--sample`` walks only
some simulated nodes (a 100 000-node walk would hold tens of millions of ids).
Benchmarks report; they never assert.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import time
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the packages importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich.console import Console
from rich.table import Table

from benchmarks.peer_worker import rss_bytes

CIPHER_NATIVE_BYTES = 2300
"""Native memory of one ``ChaCha20Poly1305`` context (RSS growth over 20 000 of them)."""

_OPAQUE = (type, types.ModuleType, types.CodeType)
"""Never counted nor crossed (shared by everything)."""
_LEAVES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)
"""Counted when made for a node (a bound method, a closure), but only their bound object
and closure cells are followed (never a module's globals)."""


class Walker:
    """Deep sizes, each object counted once; objects alive before the nodes are skipped."""

    def __init__(self) -> None:
        gc.collect()
        before = gc.get_objects()
        self._old: dict[int, object] = {id(o): o for o in before}
        for obj in before:
            for ref in gc.get_referents(obj):
                self._old[id(ref)] = ref
        self._seen: dict[int, object] = {}  # holding them keeps ids unique
        self.rounding = 0
        """Bytes lost to rounding every counted object up to the allocator's block size."""

    def size(self, root: object, stops: Iterable[object]) -> tuple[int, int]:
        """Bytes and objects reachable from ``root`` not yet counted, not crossing into
        ``stops`` (the other components)."""
        stop = {id(s) for s in stops} - {id(root)}
        if type(root) is tuple:  # a group of objects: its members are not stops either
            stop -= {id(member) for member in root}
        old, seen = self._old, self._seen
        total = count = 0
        stack = [root]
        while stack:
            obj = stack.pop()
            key = id(obj)
            if key in seen or key in old or key in stop or isinstance(obj, _OPAQUE):
                continue
            seen[key] = obj
            size = sys.getsizeof(obj)
            total += size
            self.rounding += -size % 16  # pymalloc hands out 16-byte multiples
            count += 1
            if isinstance(obj, _LEAVES):
                stack.append(getattr(obj, "__self__", None))
                stack.extend(getattr(obj, "__closure__", None) or ())
            else:
                stack.extend(gc.get_referents(obj))
        return total, count


def components(engine: Any) -> list[tuple[str, object]]:
    """The engine's parts, in the order their memory is attributed."""
    wire, ctx = engine.wire, engine._ctx
    return [
        ("routing table", engine.table),
        ("replay filter", wire.replays),
        ("per-IP rate limiter", wire.ingress),
        ("amplification budgets", wire.budget),
        ("peers that answered, refusals", (wire._answered, wire._declined, wire._by_notice)),
        ("sessions (Python side)", ctx.sessions),
        ("authenticator + verify cache", ctx.auth),
        ("identity", engine.identity),
        ("write tokens", engine.tokens),
        ("pending requests", engine.requests),
        ("peers (join times, strikes)", engine.peers),
        ("NAT state", engine.natlink),
        ("NAT traversal", engine.traversal),
        ("lookups, gets, puts", (engine.lookups, engine.gets, engine.puts, engine.fanout)),
        ("records, replication", (engine.holdings, ctx.store, engine.replicator, engine.scans)),
        ("stats counters", ctx.stats),
        ("engine, context, config", (engine, ctx, wire, ctx.config, engine._queries)),
    ]


def _children(obj: object) -> list[tuple[str, object]]:
    """The attributes of ``obj`` (instance dict and slots), or the items of a plain tuple."""
    if type(obj) is tuple:
        return [(f"[{i}]", item) for i, item in enumerate(obj)]
    out: list[tuple[str, object]] = []
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        out += [(name, value) for name, value in attrs.items()]
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                out.append((name, getattr(obj, name)))
    return out


def expand(name: str, obj: object, depth: int, avoid: set[int]) -> list[tuple[str, object]]:
    """``(name, obj)`` split into its attributes, ``depth`` levels down (the object's own
    size and what only it reaches stay under ``name``); objects in ``avoid`` (other
    components, the engine's hubs) are left to their own rows."""
    children = _children(obj) if depth > 0 and not isinstance(obj, _OPAQUE) else []
    out: list[tuple[str, object]] = []
    for child_name, child in children:
        if child is None or isinstance(child, (bool, int, float, str, bytes, _OPAQUE)):
            continue  # scalars stay with their owner
        if id(child) in avoid:
            continue
        out += expand(f"{name}.{child_name}", child, depth - 1, avoid)
    return [*out, (name, obj)]


def breakdown(
    walker: Walker,
    nodes: list[Any],
    engine_of: Any,
    shared: Iterable[object] = (),
    detail: Iterable[str] = (),
) -> dict[str, list[int]]:
    """Bytes and objects per component, summed over ``nodes`` (not crossing into
    ``shared``: objects of the whole run, such as the simulation). The components named
    in ``detail`` are split into their attributes, two levels down."""
    shared = list(shared)
    detail = set(detail)
    out: dict[str, list[int]] = {}
    for node in nodes:
        engine = engine_of(node)
        parts = [*components(engine), ("driver (node object, transport)", node)]
        stops = [engine, engine._ctx, engine.wire, engine._ctx.stats, engine._ctx.config]
        stops += shared
        if detail:
            avoid = {id(s) for s in stops} | {id(engine.requests), id(engine._queries)}
            for _, obj in parts:
                avoid.add(id(obj))
                if isinstance(obj, tuple):
                    avoid.update(id(item) for item in obj)
            parts = [
                sub
                for name, obj in parts
                for sub in (expand(name, obj, 2, avoid) if name in detail else [(name, obj)])
            ]
        stops += [obj for _, obj in parts]
        for name, obj in parts:
            size, count = walker.size(obj, stops)
            row = out.setdefault(name, [0, 0])
            row[0] += size
            row[1] += count
    return out


def counts(engines: list[Any]) -> dict[str, float]:
    n = len(engines)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n

    ciphers = mean(len(e.sessions.ciphers) for e in engines)
    return {
        "table entries": mean(len(e.table) for e in engines),
        "sessions": mean(len(e.sessions) for e in engines),
        "live AEAD contexts": ciphers,
        "remembered signatures": mean(len(e.replays) for e in engines),
        "unverified addresses": mean(len(e.budget) for e in engines),
        "peers that answered": mean(len(e.wire._answered) for e in engines),
        "write tokens of peers": mean(len(e.tokens.from_peers) for e in engines),
        "datagrams sent": mean(e.stats["tx.datagrams"] for e in engines),
    }


async def _real(nodes_wanted: int, seed: int, detail: list[str]) -> dict[str, Any]:
    import nautilus_kad  # noqa: PLC0415

    rng = random.Random(seed)
    walker = Walker()
    base = rss_bytes()
    cpu = time.process_time()
    started = time.perf_counter()
    nodes: list[Any] = []
    try:
        for _ in range(nodes_wanted):
            seeds = [n.address for n in rng.sample(nodes, min(3, len(nodes)))]
            nodes.append(await nautilus_kad.Node.start("127.0.0.1", 0, seeds))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await asyncio.sleep(0.5)  # answers still in flight settle
        gc.collect()
        rss = rss_bytes() - base
        parts = breakdown(walker, nodes, lambda node: node.engine, detail=detail)
        engines = [n.engine for n in nodes]
        return {
            "rounding": walker.rounding,
            "kind": "real",
            "nodes": nodes_wanted,
            "rss_per_node": rss / nodes_wanted,
            "wall_s": wall,
            "cpu_s": cpu,
            "parts": parts,
            "counts": counts(engines),
        }
    finally:
        for node in nodes:
            await node.stop(handoff=False)


def _sim(
    nodes_wanted: int, seed: int, lookups: int | None, sample: int | None, detail: list[str]
) -> dict[str, Any]:
    from nautilus_kad.sim import ScenarioSpec  # noqa: PLC0415
    from nautilus_kad.sim.scenario import _Runner, collector_paused  # noqa: PLC0415
    from nautilus_kad.sim.simulation import default_sim_config  # noqa: PLC0415

    walker = Walker()
    base = rss_bytes()
    cpu = time.process_time()
    started = time.perf_counter()
    lookups = nodes_wanted if lookups is None else lookups
    spec = ScenarioSpec(nodes=nodes_wanted, lookups=lookups, seed=seed,
                        config=default_sim_config())  # fmt: skip
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:  # to stderr, every 30 s
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            rss = rss_bytes() >> 20
            print(f"  {phase} {done}/{total}, RSS {rss} MiB", file=sys.stderr, flush=True)

    runner = _Runner(spec, progress)
    with collector_paused():
        result = runner.run()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gc.collect()
    rss = rss_bytes() - base
    sim = runner.sim
    nodes = list(sim.nodes.values())
    engines = [n.engine for n in nodes]
    whole = (sim.keyring, sim.network, sim.scheduler, sim.records, sim.live, sim.joined)
    shared, _ = walker.size(whole, [sim, *engines, *nodes])
    parts = {"simulator (shared: keyring, network, records)": [shared, 0]}
    walked = nodes
    if sample is not None and sample < len(nodes):  # a random sample, scaled up to all
        walked = random.Random(seed).sample(nodes, sample)
    rounding = walker.rounding
    per = breakdown(walker, walked, lambda node: node.engine, [sim, *whole], detail)
    scale = len(nodes) / len(walked)
    parts.update({name: [round(v * scale) for v in row] for name, row in per.items()})
    return {
        "rounding": rounding + (walker.rounding - rounding) * scale,
        "kind": "sim",
        "nodes": nodes_wanted,
        "lookups": lookups,
        "walked": len(walked),
        "rss_per_node": rss / nodes_wanted,
        "peak_rss_per_node": peak / nodes_wanted,
        "wall_s": wall,
        "cpu_s": cpu,
        "datagrams": result.network.sent,
        "digest": result.digest,
        "parts": parts,
        "counts": counts(engines),
    }


def show(console: Console, run: dict[str, Any]) -> None:
    n = run["nodes"]
    title = f"{'real nodes on loopback' if run['kind'] == 'real' else 'simulator'}, N = {n}"
    table = Table(title=title)
    table.add_column("where", style="bold")
    table.add_column("KiB / node", justify="right")
    table.add_column("objects / node", justify="right")
    python_total = 0
    for name, (size, count) in run["parts"].items():
        python_total += size
        table.add_row(name, f"{size / n / 1024:.1f}", f"{count / n:.0f}" if count else "")
    table.add_row("= Python objects (getsizeof)", f"{python_total / n / 1024:.1f}", "")
    native = run["counts"]["live AEAD contexts"] * CIPHER_NATIVE_BYTES
    table.add_row("+ AEAD contexts (native)", f"{native / 1024:.1f}", "")
    rounding = run["rounding"] / n
    table.add_row("+ allocator rounding (16-byte blocks)", f"{rounding / 1024:.1f}", "")
    rest = run["rss_per_node"] - python_total / n - native - rounding
    table.add_row("+ rest of the RSS (allocator, native, caches)", f"{rest / 1024:.1f}", "")
    table.add_row("= RSS growth / node", f"{run['rss_per_node'] / 1024:.1f}", "", style="bold")
    if "peak_rss_per_node" in run:
        table.add_row("peak RSS / node", f"{run['peak_rss_per_node'] / 1024:.1f}", "")
    console.print(table)
    facts = ", ".join(f"{k} {v:.1f}" for k, v in run["counts"].items())
    console.print(f"per node: {facts}", style="dim")
    console.print(f"wall {run['wall_s']:.0f} s, CPU {run['cpu_s']:.0f} s", style="dim")
    if run["kind"] == "sim":
        walked = "" if run["walked"] == n else f"; breakdown of {run['walked']} random nodes"
        console.print(
            f"{run['lookups']} lookups, {run['datagrams']} datagrams, digest {run['digest']}"
            f"{walked}", style="dim",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()  # one per process: RSS growth is its own
    which.add_argument("--nodes", type=int, default=200, help="real nodes (default 200)")
    which.add_argument("--sim", type=int, default=None, help="simulated nodes instead")
    parser.add_argument("--lookups", type=int, help="simulator: lookups after the joins (N)")
    parser.add_argument(
        "--sample", type=int, help="simulator: walk this many random nodes only, scaled to N"
    )
    parser.add_argument(
        "--detail", action="append", default=[], metavar="COMPONENT",
        help='split a component into its attributes (repeatable), e.g. "NAT state"',
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    console = Console()
    runs = []
    if args.sim:
        runs.append(_sim(args.sim, args.seed, args.lookups, args.sample, args.detail))
    elif args.loop == "uvloop":
        import uvloop  # noqa: PLC0415

        runs.append(uvloop.run(_real(args.nodes, args.seed, args.detail)))
    else:
        runs.append(asyncio.run(_real(args.nodes, args.seed, args.detail)))
    for run in runs:
        show(console, run)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
