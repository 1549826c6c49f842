"""Run the nautilus-kad benchmarks and print their results next to DESIGN.md §9's targets.

    python benchmarks/run.py            # full run (about a minute)
    python benchmarks/run.py --quick    # a few seconds
    python -m benchmarks --quick        # the same

Benchmarks report; they never assert. ``--json PATH`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from benchmarks.network import NetworkReport, run_network
from benchmarks.single_node import ThroughputReport, run_single_node

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    duration: float
    fillers: int
    window: int
    nodes: int
    puts: int
    gets: int
    loop: str
    seed: int


FULL = {"duration": 5.0, "fillers": 100, "nodes": 200, "puts": 200, "gets": 1000}
QUICK = {"duration": 1.0, "fillers": 30, "nodes": 50, "puts": 50, "gets": 200}


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="benchmarks", description="nautilus-kad benchmarks (DESIGN.md §9)"
    )
    parser.add_argument("--quick", action="store_true", help="short run with small sizes")
    parser.add_argument("--duration", type=float, help="seconds per request type (5; quick 1)")
    parser.add_argument("--fillers", type=int, help="contacts put in the server's table (100)")
    parser.add_argument("--window", type=int, default=64, help="outstanding requests (64)")
    parser.add_argument("--nodes", type=int, help="nodes in the loopback network (200)")
    parser.add_argument("--puts", type=int, help="puts in the network benchmark (200)")
    parser.add_argument("--gets", type=int, help="gets before and after the failure (1000)")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop (asyncio)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--only", choices=("throughput", "network"), help="run one of the two benchmarks"
    )
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    settings = Settings(
        duration=args.duration if args.duration is not None else defaults["duration"],
        fillers=args.fillers if args.fillers is not None else int(defaults["fillers"]),
        window=args.window,
        nodes=args.nodes if args.nodes is not None else int(defaults["nodes"]),
        puts=args.puts if args.puts is not None else int(defaults["puts"]),
        gets=args.gets if args.gets is not None else int(defaults["gets"]),
        loop=args.loop,
        seed=args.seed,
    )
    _ARGS_EXTRA.update(json=args.json, only=args.only)
    return settings


_ARGS_EXTRA: dict[str, Any] = {}


def _run(coro: Coroutine[Any, Any, T], loop_name: str) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        import uvloop  # noqa: PLC0415

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


# --- the table ---------------------------------------------------------------------------


def _fmt(value: float, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def build_table(
    settings: Settings,
    throughput: ThroughputReport | None,
    network: NetworkReport | None,
) -> Table:
    table = Table(
        title=(
            f"nautilus-kad benchmarks — Python {platform.python_version()}, "
            f"{settings.loop} loop, {os.cpu_count()} CPUs"
        ),
        show_lines=False,
    )
    table.add_column("benchmark")
    table.add_column("measured", justify="right")
    table.add_column("DESIGN §9 target", justify="right")
    table.add_column("", justify="center")
    table.add_column("notes", overflow="fold")

    if throughput is not None:
        if throughput.error:
            table.add_row("single node", "[red]error[/red]", "", "", throughput.error)
        for phase in throughput.phases:
            server_seen = throughput.server_requests.get(phase.kind, 0)
            rate = phase.answered / phase.duration if phase.duration else float("nan")
            per_cpu = throughput.per_cpu_second.get(phase.kind, float("nan"))
            table.add_row(
                f"{phase.kind} answered / s (1 node, 1 core)",
                _fmt(rate, digits=0),
                "≥ 5,000",
                _verdict(rate >= 5000),
                f"Ed25519 per datagram; window {throughput.window}, {phase.duration:g} s; "
                f"latency p50 {_fmt(phase.latency_p50_ms, ' ms')} p99 "
                f"{_fmt(phase.latency_p99_ms, ' ms')}; lost {phase.lost}; "
                f"answer {phase.mean_answer_bytes} B; table {throughput.table_size}; "
                f"server saw {server_seen:,} in all",
            )
            table.add_row(
                f"  {phase.kind} per server CPU-second",
                _fmt(per_cpu, digits=0),
                "",
                "",
                "answered ÷ CPU time the server process used (insensitive to a busy machine)",
            )
    if network is not None:
        n = network
        table.add_section()
        table.add_row(
            f"{n.nodes}-node loopback network: join",
            _fmt(n.join_seconds, " s"),
            "",
            "",
            f"one by one through a seed; {_fmt(n.join_seconds / max(1, n.nodes) * 1e3, ' ms')}"
            f" per node; mean table size {n.mean_table_size:.0f}",
        )
        acks = f"acks min {min(n.put_acks)}" if n.put_acks else "no put succeeded"
        table.add_row(
            "put latency p50 / p99",
            f"{_fmt(n.puts.percentile_ms(0.5), ' ms')} / {_fmt(n.puts.percentile_ms(0.99), ' ms')}",
            "",
            "",
            f"{n.puts.ok}/{n.puts.count} puts ok; {acks}; "
            f"CPU {_fmt(n.puts.cpu_ms_per_op, ' ms')} per put",
        )
        g = n.gets
        p50, p99 = g.percentile_ms(0.5), g.percentile_ms(0.99)
        table.add_row(
            "get latency p50",
            _fmt(p50, " ms", 3),
            "≤ 0.6 ms",
            _verdict(p50 <= 0.6),
            f"{g.count} gets of random keys from random nodes; {g.local} answered locally; "
            f"mean hops {_fmt(g.mean_hops)}; CPU {_fmt(g.cpu_ms_per_op, ' ms', 3)} per get "
            "(all nodes share this one process)",
        )
        table.add_row("get latency p99", _fmt(p99, " ms", 3), "≤ 4 ms", _verdict(p99 <= 4), "")
        table.add_row("get success", _fmt(g.success * 100, " %", 1), "", "", f"{g.failed} failed")
        f = n.gets_after_failure
        f50, f99 = f.percentile_ms(0.5), f.percentile_ms(0.99)
        table.add_row(
            "after half died: get p50",
            _fmt(f50, " ms", 3),
            "≤ 100 ms",
            _verdict(f50 <= 100),
            f"{n.nodes - n.survivors} nodes stopped abruptly, then {f.count} gets from "
            f"survivors; {f.local} answered locally; mean hops {_fmt(f.mean_hops)}; "
            f"CPU {_fmt(f.cpu_ms_per_op, ' ms', 3)} per get",
        )
        table.add_row("after half died: get p99", _fmt(f99, " ms", 3), "", "", "")
        table.add_row(
            "after half died: get success",
            _fmt(f.success * 100, " %", 1),
            "≥ 99.9 %",
            _verdict(f.success >= 0.999),
            f"{f.failed} failed (target assumes repair on; no repair yet)",
        )
    return table


def _jsonable(settings: Settings, tp: ThroughputReport | None, nw: NetworkReport | None) -> Any:
    def summary(lat: Any) -> dict[str, Any]:
        return {
            "count": lat.count,
            "ok": lat.ok,
            "failed": lat.failed,
            "local": lat.local,
            "p50_ms": lat.percentile_ms(0.5),
            "p99_ms": lat.percentile_ms(0.99),
            "mean_hops": lat.mean_hops,
            "cpu_ms_per_op": lat.cpu_ms_per_op,
        }

    out: dict[str, Any] = {"settings": asdict(settings)}
    if tp is not None:
        out["throughput"] = {
            "table_size": tp.table_size,
            "window": tp.window,
            "error": tp.error,
            "server_requests": tp.server_requests,
            "per_cpu_second": tp.per_cpu_second,
            "phases": [
                {**asdict(p), "rate": p.answered / p.duration if p.duration else None}
                for p in tp.phases
            ],
        }
    if nw is not None:
        out["network"] = {
            "nodes": nw.nodes,
            "join_seconds": nw.join_seconds,
            "mean_table_size": nw.mean_table_size,
            "put_acks_min": min(nw.put_acks) if nw.put_acks else None,
            "puts": summary(nw.puts),
            "gets": summary(nw.gets),
            "gets_after_failure": summary(nw.gets_after_failure),
            "survivors": nw.survivors,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    status = Console(stderr=True)
    out = Console(width=max(Console().width, 140))
    only = _ARGS_EXTRA.get("only")
    started = time.perf_counter()

    throughput: ThroughputReport | None = None
    if only in (None, "throughput"):
        status.log(
            f"single node: {settings.fillers} contacts, {settings.duration:g} s per request type"
        )
        throughput = _run(
            run_single_node(
                duration=settings.duration, fillers=settings.fillers, window=settings.window
            ),
            settings.loop,
        )
    network: NetworkReport | None = None
    if only in (None, "network"):
        status.log(f"network of {settings.nodes} nodes")
        network = _run(
            run_network(
                nodes=settings.nodes,
                puts=settings.puts,
                gets=settings.gets,
                seed=settings.seed,
                progress=status.log,
            ),
            settings.loop,
        )
    out.print(build_table(settings, throughput, network))
    out.print(f"total {time.perf_counter() - started:.1f} s")
    json_path = _ARGS_EXTRA.get("json")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(_jsonable(settings, throughput, network), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
