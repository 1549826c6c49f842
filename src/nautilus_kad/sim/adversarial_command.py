"""``nautilus-kad sim-adversarial``: lookup success against hostile nodes, per d.

Registered into the main CLI next to ``sim``; it drives :func:`.adversarial.run_adversarial`
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

from .adversarial import BEHAVIOURS, SYBIL, AdversarialResult, AdversarialSpec, run_adversarial
from .command import peak_rss_mib
from .simulation import default_sim_config

_HELP = """Measure lookups against hostile nodes, for d disjoint paths (S/Kademlia).

N honest nodes join once; then for each level of --malicious a share of them turns hostile
(misroute: colluders answer every FIND_NODE/FIND_VALUE with each other; silent: they drop
everything), or for --behaviour sybil that many Sybils per key arrive next to a few keys. For
each --paths d, honest nodes that never looked anything up run LOOKUPS lookups and as many gets.

A lookup succeeds when its result holds the honest node closest to the target; a get, when it
finds the value stored beforehand on the honest nodes among the key's k closest.
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


def result_table(result: AdversarialResult) -> Table:
    spec = result.spec
    sybil = spec.behaviour == SYBIL
    table = Table(
        title=f"{spec.behaviour} nodes, {result.joined} nodes joined, "
        f"{spec.lookups} lookups + {spec.lookups} gets per row",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("sybils/key" if sybil else "malicious", justify="right")
    table.add_column("d", justify="right")
    table.add_column("lookup success", justify="right")
    table.add_column("get success", justify="right")
    table.add_column("msgs/lookup", justify="right")
    table.add_column("msgs/get", justify="right")
    table.add_column("hops p50", justify="right")
    table.add_column("latency p50", justify="right")
    for cell in result.cells:
        table.add_row(
            f"{cell.level:g}" if sybil else f"{100 * cell.level:g}%",
            str(cell.paths),
            f"{100 * cell.lookup_rate:.1f}%",
            f"{100 * cell.get_rate:.1f}%",
            f"{cell.lookup_messages:.0f}",
            f"{cell.get_messages:.0f}",
            f"{cell.lookup_hops:g}",
            f"{1000 * cell.lookup_latency:.0f} ms",
        )
    table.caption = "target (DESIGN §9): 20% colluding misrouting nodes, d = 4: ≥ 99% success"
    table.caption_justify = "left"
    return table


def result_json(result: AdversarialResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "nodes": spec.nodes,
        "joined": result.joined,
        "behaviour": spec.behaviour,
        "seed": spec.seed,
        "lookups_per_cell": spec.lookups,
        "join_cpu_seconds": result.join_cpu,
        "cells_cpu_seconds": result.cells_cpu,
        "digest": result.digest,
        "cells": [
            {
                "level": c.level,
                "paths": c.paths,
                "lookup_success": c.lookup_rate,
                "get_success": c.get_rate,
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
    type=click.Choice(BEHAVIOURS),
    default="misroute",
    show_default=True,
    help="What the hostile nodes do.",
)
@click.option(
    "--malicious",
    "levels",
    callback=_floats,
    default="0.1,0.2,0.3",
    show_default=True,
    help="Malicious fractions (sybil: Sybils per key, e.g. 10,20,40).",
)
@click.option("--paths", callback=_ints, default="1,2,4,8", show_default=True)
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
    behaviour: str,
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
        console = Console(width=120)
    try:
        spec = AdversarialSpec(
            nodes=nodes,
            behaviour=behaviour,
            levels=levels,
            paths=paths,
            lookups=lookups,
            sybil_keys=sybil_keys,
            seed=seed,
            config=default_sim_config(),
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console.print(
        f"[bold]nautilus-kad sim-adversarial[/]: {nodes} nodes, {behaviour}, levels "
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
