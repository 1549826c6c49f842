"""Durability in the simulator (issue 4): a mass kill and continuous churn, full size.

    python -m benchmarks.durability                        # both, 1000 nodes, 1000 records
    python -m benchmarks.durability --scenario masskill
    python -m benchmarks.durability --scenario churn --hours 24 --mean-session 30m
    python -m benchmarks.durability --nodes 300 --records 300 --hours 4   # a few minutes

mass kill: the network forms, the records are put, half the nodes crash at once (no handoff);
after one repair period (the holders' republish interval, 1 h) prints the replica-count
distribution before the kill, right after it and after the repair period, the share of
records read back from random live nodes and the share back on k live nodes.

churn: sessions of the given mean (exponential unless ``--shape``), every departure a crash,
arrivals keep the population steady; random nodes read random records the whole time. Prints
one row per virtual hour and the overall get success.

Everything runs with the simulator's default engine configuration (``default_sim_config()``).
Benchmarks report; they never assert. ``--json PATH`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich import box
from rich.console import Console
from rich.table import Table

from nautilus_kad.sim import parse_duration
from nautilus_kad.sim.command import peak_rss_mib
from nautilus_kad.sim.durability import (
    ChurnResult,
    ChurnSpec,
    MassKillResult,
    MassKillSpec,
    ReplicaCounts,
    run_churn,
    run_mass_kill,
)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _histogram(counts: ReplicaCounts) -> str:
    return " ".join(f"{c}:{n}" for c, n in counts.histogram.items())


def masskill_table(r: MassKillResult) -> tuple[Table, list[str]]:
    spec = r.spec
    table = Table(
        title=f"mass kill: {r.joined} nodes, {r.stored} records, {r.killed} killed at once "
        f"(seed {spec.seed})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name in ("moment", "min/p1/p50/p99/max copies", "on k live", "lost"):
        table.add_column(name, justify="left" if name == "moment" else "right")
    moments = [("before the kill", r.before), ("right after", r.after_kill)]
    moments += [(f"after {counts.at - r.after_kill.at:.0f} s", counts) for counts in r.timeline]
    for label, counts in moments:
        table.add_row(label, counts.brief(), _pct(counts.on_k_share), str(counts.lost))
    return table, [
        f"readable after the repair period: {r.reads_ok}/{r.stored} = {_pct(r.readable_share)}; "
        f"back on k live nodes: {_pct(r.back_on_k_share)}",
        f"datagrams: {r.datagrams_repair} in the repair period, {r.datagrams_total} in all; "
        f"wall {r.wall_seconds:.1f} s, CPU {r.cpu_seconds:.1f} s",
    ]


def churn_table(r: ChurnResult) -> tuple[Table, list[str]]:
    spec = r.spec
    table = Table(
        title=f"churn: {spec.nodes} nodes, {r.stored} records, mean session "
        f"{spec.mean_session:g} s (Weibull shape {spec.shape:g}), {spec.hours:g} h "
        f"(seed {spec.seed})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name in ("hour", "live", "gets ok", "min/p1/p50/p99/max copies", "on k", "lost", "dgrams"):
        table.add_column(name, justify="right")
    for row in r.rows:
        table.add_row(
            f"{row.end / 3600:.1f}",
            str(row.live),
            f"{row.gets_ok}/{row.gets}",
            row.replicas.brief(),
            _pct(row.replicas.on_k_share),
            str(row.replicas.lost),
            str(row.datagrams),
        )
    failures = ", ".join(f"{n} {why}" for why, n in r.failures.items()) or "none"
    return table, [
        f"gets: {r.gets_ok}/{r.gets} = {_pct(r.success_share)} "
        f"({r.gets_lost} abandoned with their node; failures: {failures})",
        f"{r.arrivals} arrivals, {r.departures} departures; "
        f"{r.datagrams_per_node_second:.2f} datagrams per node-second under churn; "
        f"wall {r.wall_seconds:.1f} s, CPU {r.cpu_seconds:.1f} s",
    ]


def _show(console: Console, table: Table, lines: list[str]) -> None:
    console.print(table)
    for line in lines:
        console.print(line)


def _json(result: MassKillResult | ChurnResult) -> dict[str, Any]:
    data = asdict(result)
    data["spec"] = {k: v for k, v in data["spec"].items() if k not in ("config", "latency")}
    if isinstance(result, MassKillResult):
        data["readable_share"] = result.readable_share
        data["back_on_k_share"] = result.back_on_k_share
        for name in ("before", "after_kill", "after_repair"):
            data[name] = getattr(result, name).histogram
        data["timeline"] = [
            {"after": c.at - result.after_kill.at, "on_k_share": c.on_k_share, "lost": c.lost}
            for c in result.timeline
        ]
    else:
        data["success_share"] = result.success_share
        for row, raw in zip(result.rows, data["rows"], strict=True):
            raw["replicas"] = row.replicas.histogram
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("masskill", "churn", "both"), default="both")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-fraction", type=float, default=0.5)
    parser.add_argument("--hours", type=float, default=24.0, help="churn: virtual hours")
    parser.add_argument("--mean-session", default="30m", help="churn: mean session (30m)")
    parser.add_argument("--shape", type=float, default=1.0, help="churn: Weibull shape")
    parser.add_argument("--gets", type=int, default=5000, help="churn: reads over the run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # logs and pipes: room for the tables

    def progress(line: str) -> None:
        console.print(f"  {time.strftime('%H:%M:%S')} {line}", style="dim")

    out: dict[str, Any] = {}
    if args.scenario in ("masskill", "both"):
        spec = MassKillSpec(
            nodes=args.nodes,
            records=args.records,
            seed=args.seed,
            kill_fraction=args.kill_fraction,
        )
        mass = run_mass_kill(spec, progress)
        _show(console, *masskill_table(mass))
        for label, counts in (
            ("before", mass.before),
            ("after kill", mass.after_kill),
            ("after repair", mass.after_repair),
        ):
            console.print(f"copies {label:<12} {_histogram(counts)}")
        out["masskill"] = _json(mass)
    if args.scenario in ("churn", "both"):
        churn_spec = ChurnSpec(
            nodes=args.nodes,
            records=args.records,
            seed=args.seed,
            hours=args.hours,
            mean_session=parse_duration(args.mean_session),
            shape=args.shape,
            gets=args.gets,
        )
        churn = run_churn(churn_spec, progress)
        _show(console, *churn_table(churn))
        out["churn"] = _json(churn)
    console.print(f"peak RSS {peak_rss_mib():.0f} MiB")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
