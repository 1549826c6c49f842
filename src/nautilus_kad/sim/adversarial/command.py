"""``nautilus-kad sim-adversarial``: lookup success against hostile nodes, per d.

Registered into the main CLI next to ``sim``; it drives :func:`.scenario.run_adversarial`
and prints one row per (malicious level, disjoint paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from ..command import peak_rss_mib
from ..simulation import default_sim_config
from .answers import ANSWERING
from .scenario import BEHAVIOURS, SYBIL, AdversarialResult, AdversarialSpec, run_adversarial

_HELP = """Measure lookups against hostile nodes, for d disjoint paths (S/Kademlia).

N honest nodes join once; then for each --behaviour and each level of --malicious a share
of them turns hostile (misroute: colluders answer every FIND_NODE/FIND_VALUE with the same
colluders; scatter: never the same colluder twice to a requester; forge: the true honest
neighbours at false addresses; scatter-forge: both; silent: they drop everything), or for
sybil that many Sybils per key arrive next to a few keys and answer as --sybil-behaviour.
For each --paths d, honest nodes that never looked anything up run LOOKUPS lookups and as
many gets.

A lookup succeeds when its result holds the honest node closest to the target; a get, when it
finds the value stored beforehand on the honest nodes among the key's k closest. "strict" is
the S/Kademlia paper's measure: some path got there without querying a hostile node.
"""


def _floats(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not values:
        raise click.BadParameter("give at least one value")
    return values


def _ints(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not values:
        raise click.BadParameter("give at least one value")
    return values


def _behaviours(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in BEHAVIOURS]
    if unknown or not names:
        raise click.BadParameter(
            f"{', '.join(unknown) or value!r}: choose from {', '.join(BEHAVIOURS)}"
        )
    return names


def result_table(result: AdversarialResult) -> Table:
    spec = result.spec
    sybil = SYBIL in spec.behaviours
    cfg = spec.config
    table = Table(
        title=f"{result.joined} nodes joined, k = {cfg.k}, alpha = {cfg.alpha}, "
        f"{spec.lookups} lookups + {spec.lookups} gets per row",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("behaviour")
    table.add_column("sybils/key" if sybil else "malicious", justify="right")
    table.add_column("d", justify="right")
    table.add_column("lookup success", justify="right")
    table.add_column("strict", justify="right")
    table.add_column("get success", justify="right")
    table.add_column("strict", justify="right")
    table.add_column("msgs/lookup", justify="right")
    table.add_column("msgs/get", justify="right")
    table.add_column("hops p50", justify="right")
    table.add_column("latency p50", justify="right")
    for cell in result.cells:
        table.add_row(
            cell.behaviour if cell.behaviour != SYBIL else f"sybil ({spec.sybil_behaviour})",
            f"{cell.level:g}" if sybil else f"{100 * cell.level:g}%",
            str(cell.paths),
            f"{100 * cell.lookup_rate:.1f}%",
            f"{100 * cell.lookup_strict_rate:.1f}%",
            f"{100 * cell.get_rate:.1f}%",
            f"{100 * cell.get_strict_rate:.1f}%",
            f"{cell.lookup_messages:.0f}",
            f"{cell.get_messages:.0f}",
            f"{cell.lookup_hops:g}",
            f"{1000 * cell.lookup_latency:.0f} ms",
        )
    table.caption = (
        "target (issue 16): k = 20, alpha = 3, d = 4, strongest behaviour: "
        "≥ 99% at 20% hostile, ≥ 95% at 30%"
    )
    table.caption_justify = "left"
    return table


def result_json(result: AdversarialResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "nodes": spec.nodes,
        "joined": result.joined,
        "behaviours": list(spec.behaviours),
        "sybil_behaviour": spec.sybil_behaviour,
        "k": spec.config.k,
        "alpha": spec.config.alpha,
        "seed": spec.seed,
        "lookups_per_cell": spec.lookups,
        "join_cpu_seconds": result.join_cpu,
        "cells_cpu_seconds": result.cells_cpu,
        "digest": result.digest,
        "cells": [
            {
                "behaviour": c.behaviour,
                "level": c.level,
                "paths": c.paths,
                "lookup_success": c.lookup_rate,
                "lookup_success_strict": c.lookup_strict_rate,
                "get_success": c.get_rate,
                "get_success_strict": c.get_strict_rate,
                "lookup_messages": c.lookup_messages,
                "get_messages": c.get_messages,
                "lookup_hops_p50": c.lookup_hops,
                "lookup_latency_p50": c.lookup_latency,
                "malicious": c.malicious,
            }
            for c in result.cells
        ],
    }


@click.command("sim-adversarial", help=_HELP)
@click.option("--nodes", "-n", type=click.IntRange(10), default=1000, show_default=True)
@click.option(
    "--behaviour",
    "behaviours",
    callback=_behaviours,
    default="misroute",
    show_default=True,
    help=f"What the hostile nodes do, comma-separated ({', '.join(BEHAVIOURS)}); "
    "measured one after another on the same network.",
)
@click.option(
    "--sybil-behaviour",
    type=click.Choice(ANSWERING),
    default="misroute",
    show_default=True,
    help="What Sybils answer (--behaviour sybil).",
)
@click.option("--k", "k", type=click.IntRange(1, 32), default=20, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 16), default=3, show_default=True)
@click.option(
    "--malicious",
    "levels",
    callback=_floats,
    default="0.1,0.2,0.3",
    show_default=True,
    help="Malicious fractions (sybil: Sybils per key, e.g. 10,20,40).",
)
@click.option(
    "--paths",
    callback=_ints,
    default="1,2,4,8",
    show_default=True,
    help="Disjoint path counts d, comma-separated.",
)
@click.option(
    "--lookups",
    "-l",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Lookups per row (and as many gets).",
)
@click.option(
    "--sybil-keys",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Keys that get Sybils (--behaviour sybil).",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON here.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def adversarial_command(
    nodes: int,
    behaviours: tuple[str, ...],
    sybil_behaviour: str,
    k: int,
    alpha: int,
    levels: tuple[float, ...],
    paths: tuple[int, ...],
    lookups: int,
    sybil_keys: int,
    seed: int,
    json_path: Path | None,
    quiet: bool,
) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    try:
        spec = AdversarialSpec(
            nodes=nodes,
            behaviours=behaviours,
            sybil_behaviour=sybil_behaviour,
            levels=levels,
            paths=paths,
            lookups=lookups,
            sybil_keys=sybil_keys,
            seed=seed,
            config=default_sim_config().with_changes(k=k, alpha=alpha),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console.print(
        f"[bold]nautilus-kad sim-adversarial[/]: {nodes} nodes, k {k}, alpha {alpha}, "
        f"{','.join(behaviours)}, levels "
        f"{','.join(f'{v:g}' for v in levels)}, d {','.join(map(str, paths))}, seed {seed} "
        "(auth: sim hash, not security)"
    )
    progress = None if quiet else (lambda line: console.print(f"  {line}", highlight=False))
    result = run_adversarial(spec, progress)
    console.print(result_table(result))
    console.print(
        f"CPU: join {result.join_cpu:.1f}s, rows {result.cells_cpu:.1f}s; "
        f"peak RSS {peak_rss_mib():.0f} MiB; digest {result.digest}"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(result_json(result), indent=2) + "\n", encoding="utf-8")
