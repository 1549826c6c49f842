"""Summaries, tables and figures of a simulation's measurements.

:func:`summarize` reduces :class:`~.simulation.OpRecord` lists to one :class:`Summary` per
(phase, kind): count, success rate, exact-k rate, and p50/p90/p99 of hops, messages and
latency. :func:`write_plots` draws the figures with matplotlib (the optional ``plot`` extra).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .simulation import OpRecord

KIND_ORDER = ("join", "lookup", "put", "get")
PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile by the nearest-rank method (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Spread:
    """p50 / p90 / p99 of one measurement."""

    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        return cls(*(percentile(ordered, p) for p in PERCENTILES))


@dataclass(frozen=True, slots=True)
class Summary:
    phase: str
    kind: str
    count: int
    successes: int
    exact: int | None
    """How many returned exactly the true k closest (lookups only)."""
    recall: float | None
    """Mean share of the true k closest that lookups returned (lookups only)."""
    hops: Spread
    messages: Spread
    latency: Spread
    """Seconds of virtual time."""

    @property
    def success_rate(self) -> float:
        return self.successes / self.count if self.count else math.nan

    @property
    def exact_rate(self) -> float | None:
        if self.exact is None:
            return None
        return self.exact / self.count if self.count else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "kind": self.kind,
            "count": self.count,
            "success_rate": self.success_rate,
            "exact_rate": self.exact_rate,
            "recall": self.recall,
            "hops": [self.hops.p50, self.hops.p90, self.hops.p99],
            "messages": [self.messages.p50, self.messages.p90, self.messages.p99],
            "latency_s": [self.latency.p50, self.latency.p90, self.latency.p99],
        }


def summarize(records: Iterable[OpRecord]) -> list[Summary]:
    """One summary per (phase, kind), phases in order of first appearance."""
    groups: dict[tuple[str, str], list[OpRecord]] = {}
    phases: list[str] = []
    for record in records:
        if record.phase not in phases:
            phases.append(record.phase)
        groups.setdefault((record.phase, record.kind), []).append(record)
    kinds = list(KIND_ORDER) + sorted({k for _, k in groups} - set(KIND_ORDER))
    result = []
    for phase in phases:
        for kind in kinds:
            group = groups.get((phase, kind))
            if not group:
                continue
            exacts = [r.exact for r in group if r.exact is not None]
            recalls = [r.recall for r in group if r.recall is not None]
            result.append(
                Summary(
                    phase=phase,
                    kind=kind,
                    count=len(group),
                    successes=sum(r.success for r in group),
                    exact=sum(exacts) if exacts else None,
                    recall=sum(recalls) / len(recalls) if recalls else None,
                    hops=Spread.of([r.hops for r in group]),
                    messages=Spread.of([r.messages for r in group]),
                    latency=Spread.of([r.latency for r in group]),
                )
            )
    return result


def success_over_time(
    records: Iterable[OpRecord], bins: int = 40, kinds: Sequence[str] = ("lookup", "get")
) -> list[tuple[float, float, int]]:
    """``(bin start, success rate, count)`` over the virtual time operations finished."""
    chosen = [r for r in records if r.kind in kinds]
    if not chosen:
        return []
    start = min(r.end for r in chosen)
    stop = max(r.end for r in chosen)
    width = (stop - start) / bins or 1.0
    counts = [0] * bins
    wins = [0] * bins
    for r in chosen:
        i = min(bins - 1, int((r.end - start) / width))
        counts[i] += 1
        wins[i] += r.success
    return [(start + i * width, wins[i] / counts[i], counts[i]) for i in range(bins) if counts[i]]


# --- figures ----------------------------------------------------------------------------------


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported on demand

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise PlotUnavailableError(
            "plotting needs matplotlib: pip install 'nautilus-kad[plot]'"
        ) from exc
    return plt


def write_plots(records: Sequence[OpRecord], directory: Path, title: str = "") -> list[Path]:
    """Draw the hops histogram, the latency CDF and success over time as PNG files in
    ``directory`` (``sim-hops.png``, ``sim-latency-cdf.png``, ``sim-success-over-time.png``);
    returns their paths. Raises :class:`PlotUnavailableError` without
    matplotlib."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ops = [r for r in records if r.kind in ("lookup", "get", "put")]
    lookups = [r for r in records if r.kind == "lookup"]
    suffix = f" — {title}" if title else ""

    # hops histogram
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    source = lookups or ops
    if source:
        hops = [r.hops for r in source]
        edges = [h - 0.5 for h in range(min(hops), max(hops) + 2)]
        ax.hist(hops, bins=edges, color="#3b75af", edgecolor="white", rwidth=0.85)
        ax.set_xticks(range(min(hops), max(hops) + 1))
    ax.set_xlabel("hops (rounds to reach the final k)")
    ax.set_ylabel("lookups")
    ax.set_title(f"Lookup hops{suffix}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = directory / "sim-hops.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    # latency CDF, one line per kind
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for kind in ("lookup", "get", "put"):
        lat = sorted(r.latency * 1000 for r in records if r.kind == kind)
        if lat:
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.plot(lat, ys, label=f"{kind} ({len(lat)})")
    ax.set_xscale("log")
    ax.set_xlabel("virtual latency (ms)")
    ax.set_ylabel("fraction of operations")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Latency CDF{suffix}")
    ax.grid(alpha=0.3, which="both")
    if ops:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = directory / "sim-latency-cdf.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)

    # success over time
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    series = success_over_time(records)
    if series:
        t0 = series[0][0]
        xs = [t - t0 for t, _, _ in series]
        ax.plot(xs, [s * 100 for _, s, _ in series], marker=".", label="lookups and gets: success")
        exact = success_over_time([_as_exact(r) for r in lookups], kinds=("lookup",))
        if exact:
            ax.plot(
                [t - t0 for t, _, _ in exact],
                [s * 100 for _, s, _ in exact],
                marker=".",
                label="lookups: exact k closest",
            )
        ax.legend(loc="lower left")
    ax.set_xlabel("virtual time since the first finished operation (s)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 101)
    ax.set_title(f"Success over time{suffix}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / "sim-success-over-time.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
    return written


def _as_exact(record: OpRecord) -> OpRecord:
    """A copy of a lookup record whose ``success`` is "returned exactly the true k"."""
    return dataclasses.replace(record, success=bool(record.exact))
