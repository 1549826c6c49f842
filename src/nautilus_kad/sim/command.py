"""``nautilus-kad sim``: run a scenario from the command line.

The click command :data:`sim_command` is registered into the main CLI group; ``python -m
nautilus_kad.sim`` runs it on its own.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..core.config import KadConfig
from .network import parse_duration, parse_latency
from .report import PlotUnavailableError, Summary, summarize, write_plots
from .scenario import ChurnModel, ScenarioResult, ScenarioSpec, run_scenario
from .simulation import default_sim_config

_HELP = """Simulate a network of N nodes running the real engine on a virtual clock.

Nodes join through bootstrap addresses like real nodes, then random nodes run LOOKUPS lookups
(and PUTS puts, each read back by gets from other nodes). Prints hops, messages, latency and
success per phase; the same seed and parameters always give the same run (see the digest).

By default datagrams are authenticated with a cheap keyed hash shared by every simulated node:
it is NOT a security mechanism, it only keeps Ed25519 from dominating the run time. Use
--real-crypto for true Ed25519 signatures on every datagram (much slower); the benchmarks
report what the cryptography costs.
"""


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive")
    return seconds


def _latency(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    try:
        return parse_latency(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fmt(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.2f}%"


def _triple(*values: float, scale: float = 1.0) -> str:
    return "/".join(_fmt(x * scale) for x in values)


def summary_table(summaries: list[Summary], title: str = "") -> Table:
    """The per-phase table the command prints (percentiles are p50/p90/p99)."""
    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("phase")
    table.add_column("op")
    table.add_column("n", justify="right")
    table.add_column("success", justify="right")
    table.add_column("exact k", justify="right")
    table.add_column("recall", justify="right")
    table.add_column("hops", justify="right")
    table.add_column("msgs", justify="right")
    table.add_column("latency ms", justify="right")
    for s in summaries:
        no_hops = s.kind in ("join", "put", "ping")  # their events carry no hop count
        table.add_row(
            s.phase,
            s.kind,
            str(s.count),
            _pct(s.success_rate),
            _pct(s.exact_rate),
            _pct(s.recall),
            "-" if no_hops else _triple(s.hops.p50, s.hops.p90, s.hops.p99),
            _triple(s.messages.p50, s.messages.p90, s.messages.p99),
            _triple(s.latency.p50, s.latency.p90, s.latency.p99, scale=1000),
        )
    table.caption = "hops, msgs, latency: p50/p90/p99"
    table.caption_justify = "left"
    return table


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def result_json(result: ScenarioResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "spec": {
            "nodes": spec.nodes,
            "lookups": spec.lookups,
            "puts": spec.puts,
            "gets_per_put": spec.gets_per_put,
            "seed": spec.seed,
            "loss": spec.loss,
            "latency": repr(spec.latency),
            "churn": None
            if spec.churn is None
            else {
                "median_session": spec.churn.median_session,
                "shape": spec.churn.shape,
                "clean_fraction": spec.churn.clean_fraction,
            },
            "real_crypto": spec.real_crypto,
            "join_refresh": spec.config.join_refresh,
        },
        "digest": result.digest,
        "wall_seconds": result.wall_seconds,
        "phase_wall_seconds": result.phase_wall,
        "virtual_seconds": result.virtual_seconds,
        "events": result.events,
        "datagrams": result.network.sent,
        "datagrams_lost": result.network.lost,
        "live_nodes": result.live_nodes,
        "arrivals": result.arrivals,
        "departures": result.departures,
        "aborted": result.aborted,
        "peak_rss_mib": peak_rss_mib(),
        "summaries": [s.as_dict() for s in summarize(result.records)],
    }


@click.command("sim", help=_HELP)
@click.option("--nodes", "-n", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--lookups", "-l", type=click.IntRange(0), default=1000, show_default=True)
@click.option(
    "--puts", type=click.IntRange(0), default=0, show_default=True, help="Puts of random keys."
)
@click.option(
    "--gets-per-put",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Gets from other random nodes after each successful put.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--loss",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Probability that any datagram is lost.",
)
@click.option(
    "--churn",
    callback=_duration,
    default=None,
    metavar="MEDIAN",
    help="Churn during the workload: median session length (e.g. 30m, 2h); sessions are "
    "Weibull with --churn-shape, arrivals keep the population steady.",
)
@click.option("--churn-shape", type=click.FloatRange(0.05, 10.0), default=0.5, show_default=True)
@click.option(
    "--clean-leaves",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Share of departures that are clean leaves (the others crash).",
)
@click.option(
    "--latency",
    callback=_latency,
    default="lognormal:40ms,0.6",
    show_default=True,
    help="Per-link one-way delay model: lognormal[:MEDIAN[,SIGMA]], constant:D, uniform:LO,HI.",
)
@click.option("--jitter", type=click.FloatRange(0.0, 10.0), default=0.1, show_default=True)
@click.option(
    "--join-rate",
    type=click.FloatRange(0.001),
    default=100.0,
    show_default=True,
    help="Arrivals per virtual second while the network forms.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0.001),
    default=100.0,
    show_default=True,
    help="Lookups and puts started per virtual second.",
)
@click.option(
    "--duration",
    callback=_duration,
    default=None,
    metavar="TIME",
    help="Spread the lookups and puts over this much virtual time (e.g. 30m) instead of "
    "using --rate: what churn needs to show.",
)
@click.option(
    "--real-crypto",
    is_flag=True,
    help="Sign and verify every datagram with real Ed25519 (slow) instead of the simulator's "
    "shared-key hash, which is not a security mechanism.",
)
@click.option(
    "--join-refresh",
    is_flag=True,
    help="Join as the daemon does by default (the Kademlia paper's join: also refresh every "
    "farther bucket, about 5x the join messages). Without it nodes join with the own-id "
    "lookup alone.",
)
@click.option("--k", "k", type=click.IntRange(1, 32), default=None, help="Bucket size k.")
@click.option("--alpha", type=click.IntRange(1, 16), default=None, help="Lookup parallelism.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write PNG figures (hops, latency CDF, success over time) here; needs matplotlib.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON here ('-' for stdout).",
)
@click.option("--trace", is_flag=True, help="Hash every datagram into the digest (slower).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sim_command(
    nodes: int,
    lookups: int,
    puts: int,
    gets_per_put: int,
    seed: int,
    loss: float,
    churn: float | None,
    churn_shape: float,
    clean_leaves: float,
    latency: Any,
    jitter: float,
    join_rate: float,
    rate: float,
    duration: float | None,
    real_crypto: bool,
    join_refresh: bool,
    k: int | None,
    alpha: int | None,
    plot_dir: Path | None,
    json_path: Path | None,
    trace: bool,
    quiet: bool,
) -> None:
    to_stderr = json_path is not None and str(json_path) == "-"
    console = Console(stderr=to_stderr)
    if not console.is_terminal:
        console = Console(stderr=to_stderr, width=120)  # logs and pipes: room for the table
    if plot_dir is not None:
        try:
            import matplotlib  # noqa: F401, PLC0415 - only checking that it is there
        except ImportError:
            raise click.UsageError(
                "--plot needs matplotlib: pip install 'nautilus-kad[plot]'"
            ) from None
    changes: dict[str, object] = {"join_refresh": join_refresh}
    if k is not None:
        changes["k"] = k
        changes["replacement_cache_size"] = k
    if alpha is not None:
        changes["alpha"] = alpha
    try:
        config: KadConfig = default_sim_config().with_changes(**changes)
        spec = ScenarioSpec(
            nodes=nodes,
            lookups=lookups,
            puts=puts,
            gets_per_put=gets_per_put,
            seed=seed,
            loss=loss,
            latency=latency,
            jitter=jitter,
            churn=None
            if churn is None
            else ChurnModel(churn, shape=churn_shape, clean_fraction=clean_leaves),
            join_rate=join_rate,
            op_rate=rate,
            duration=duration,
            real_crypto=real_crypto,
            config=config,
            trace=trace,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    auth = "Ed25519" if real_crypto else "sim hash (not security)"
    console.print(
        f"[bold]nautilus-kad sim[/]: {nodes} nodes, {lookups} lookups, {puts} puts, seed {seed}, "
        f"loss {loss:g}, churn {'off' if churn is None else f'median {churn:g}s'}, "
        f"auth {auth}, join {'paper (refresh)' if join_refresh else 'own-id lookup'}"
    )
    if quiet:
        result = run_scenario(spec)
    else:
        with Progress(
            TextColumn("[bold]{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                task = tasks.get(phase)
                if task is None:
                    task = tasks[phase] = bar.add_task(phase, total=total)
                bar.update(task, completed=done, total=total)

            result = run_scenario(spec, progress)

    summaries = summarize(result.records)
    console.print(summary_table(summaries))
    stats = result.network
    console.print(
        f"wall {result.wall_seconds:.1f}s "
        f"(join {result.phase_wall.get('join', 0.0):.1f}s, "
        f"workload {result.phase_wall.get('workload', 0.0):.1f}s), "
        f"virtual {result.virtual_seconds:.1f}s, {result.events} events, "
        f"{stats.sent} datagrams ({stats.lost} lost), peak RSS {peak_rss_mib():.0f} MiB"
    )
    if spec.churn is not None:
        console.print(
            f"churn: {result.arrivals - nodes} arrivals, {result.departures} departures, "
            f"{result.aborted} operations lost with their node, {result.live_nodes} nodes live"
        )
    console.print(f"digest {result.digest}")
    if json_path is not None:
        text = json.dumps(result_json(result), indent=2)
        if str(json_path) == "-":
            click.echo(text)
        else:
            json_path.write_text(text + "\n", encoding="utf-8")
    if plot_dir is not None:
        title = f"{nodes} nodes" + (f", loss {loss:g}" if loss else "")
        if churn is not None:
            title += f", churn {churn:g}s median"
        try:
            paths = write_plots(result.records, plot_dir, title)
        except PlotUnavailableError as exc:  # pragma: no cover - checked above
            raise click.UsageError(str(exc)) from None
        for path in paths:
            console.print(f"wrote {path}")
