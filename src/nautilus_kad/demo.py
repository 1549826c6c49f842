"""``nautilus-kad demo``: a network of real UDP nodes on loopback, in one process.

It forms the network (every node joins through up to three running ones), looks up random
ids (the table shows how many hops a lookup takes at this size), puts values, gets them back
from other nodes, crashes a share of the nodes, gets everything again, and waits for the
survivors to put every value back on k live nodes. ``demo --serve`` then keeps the surviving
network up with one node's live page (:mod:`nautilus_kad.daemon`) open for exploring.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .aio.node import Node
from .clierrors import describe_os_error
from .core.addresses import format_address
from .core.config import KadConfig
from .core.errors import KadError
from .core.events import Event, LookupDone
from .core.ids import NodeId
from .sim.report import percentile

DEMO_NODES = 200
"""Default network size: large enough that a lookup takes a few hops (measured at 200
nodes: 2 to 4 hops, most 2 or 3; at 100 nodes 86 of 100 took 2), and small enough that the
whole demo takes about 15 s on one core of an idle machine."""
DEMO_LOOKUPS = 100
DEMO_VALUES = 20
"""Values put, got and repaired. Every value's holders republish it every few seconds in
the demo (see :data:`DEMO_REPUBLISH_INTERVAL`), so the background work grows with the count:
at 50 values it kept one core about two thirds busy from the puts on, and the gets after the
repair waited in that queue (p50 277 ms on an idle machine)."""
DEMO_SUCCESS_AFTER_KILL = 0.99
"""Share of gets that must still succeed after the demo's crash for it to pass."""
DEMO_REPUBLISH_INTERVAL = 4.0
"""The demo's republish interval: production's hour, shrunk so repair shows in seconds."""

_log = logging.getLogger("nautilus_kad.demo")


@dataclass
class Phase:
    """Measurements of one batch of operations."""

    attempts: int = 0
    successes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    hops: list[int] = field(default_factory=list)
    """Hops of the gets that went to the network (local answers are counted in ``local``)."""
    local: int = 0
    """Gets answered from the getter's own store (it is one of the k closest to the key)."""
    timeouts: list[int] = field(default_factory=list)
    """Requests of each network get that timed out (dead or overloaded peers it waited on)."""

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 1.0

    def success_text(self) -> str:
        return f"{self.successes}/{self.attempts} ({100 * self.success_rate:.1f}%)"

    def latency_text(self) -> str:
        if not self.latencies_ms:
            return "-"
        ordered = sorted(self.latencies_ms)
        return f"{percentile(ordered, 50):.2f} / {percentile(ordered, 99):.2f} ms"

    def timeouts_text(self) -> str:
        if not self.timeouts:
            return "-"
        waited = sum(1 for t in self.timeouts if t)
        return f"{sum(self.timeouts)} in {waited}/{len(self.timeouts)}"

    def hops_text(self) -> str:
        if not self.hops:
            return "-"
        return f"{statistics.fmean(self.hops):.2f} / {statistics.median(self.hops):g}"


@dataclass
class DemoReport:
    seed: int
    nodes_before: int
    nodes_after: int
    values: int
    table_before: float
    table_after: float
    dead_entries: float
    """Mean number of crashed nodes still in a survivor's routing table at the end."""
    puts: Phase
    gets_before: Phase
    gets_after: Phase
    sample: list[str]
    seconds: float
    replicas_before: list[int] = field(default_factory=list)
    """How many live nodes hold each value, before the crash."""
    replicas_after: list[int] = field(default_factory=list)
    """... right after the crash (nothing handed on: the crashed copies are just gone)."""
    replicas_repaired: list[int] = field(default_factory=list)
    """... once the survivors have re-replicated (or the wait ran out)."""
    target: int = 0
    """The replica count every value should have: k, or every node when fewer live."""
    target_after: int = 0
    repair_seconds: float = 0.0
    gets_repaired: Phase = field(default_factory=Phase)
    lookup_hops: list[int] = field(default_factory=list)
    """Hops of each random-id lookup."""


def demo_config(republish_interval: float, k: int = 20) -> KadConfig:
    """The demo network's configuration: production's, with time compressed (and ``k`` as
    asked).

    Every node shares one process and one core, so besides the interval itself the holders'
    timers are spread wider (half the interval), each node runs fewer republish lookups at
    once, and a dead holder is replaced after a tenth of the interval.

    A join is the own-id lookup alone (``join_refresh`` off, as in the simulator): the
    per-bucket refresh lookups of a production join cost 3.4 times the CPU of forming the
    100-node network (15 200 requests instead of 4 400; 10.6 s of CPU instead of 3.1 s on the
    development machine) for tables of 64 contacts instead of 39, and lookups still take one
    to three hops (measured: 1: 19, 2: 77, 3: 4 of 100 with it off; 1: 22, 2: 77, 3: 1 on).
    """
    return KadConfig(
        k=k,
        republish_interval=republish_interval,
        republish_jitter=0.5,
        repair_delay=republish_interval / 10,
        max_concurrent_republish=4,
        join_refresh=False,
    )


def _replicas(items: Sequence[tuple[bytes, bytes, Node]], nodes: Sequence[Node]) -> list[int]:
    """How many of ``nodes`` hold each item."""
    return [sum(1 for n in nodes if n.holds(key)) for key, _, _ in items]


async def run_demo(
    host: str,
    count: int,
    values: int,
    seed: int,
    kill_fraction: float,
    republish_interval: float = DEMO_REPUBLISH_INTERVAL,
    lookups: int = DEMO_LOOKUPS,
    k: int = 20,
    serve: Callable[[DemoReport, list[Node]], Awaitable[None]] | None = None,
) -> DemoReport:
    """Run the demo; with ``serve``, hand it the report and the surviving nodes before they
    stop (``demo --serve`` keeps them up for the live page)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    config = demo_config(republish_interval, k)
    nodes: list[Node] = []
    progress = Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    try:
        with progress:
            # 1. Form the network: node 0 is the seed, every later node joins through up to
            #    three nodes that are already running.
            task = progress.add_task("forming the network", total=count)
            nodes.append(await _start_node(host, config))
            progress.advance(task)
            for _ in range(1, count):
                seeds = [n.address for n in rng.sample(nodes, min(3, len(nodes)))]
                node = await _start_node(host, config)
                nodes.append(node)
                await node.bootstrap(seeds)
                progress.advance(task)
            table_before = statistics.fmean(len(n.routing_table) for n in nodes)

            # 1b. Look up random ids: how many hops a lookup takes in a network of this size
            #     (before any value is stored, so no republishing competes with them).
            lookup_hops = await _random_lookups(nodes, rng, lookups, progress)

            # 2. Put every value from a random node.
            items: list[tuple[bytes, bytes, Node]] = []
            puts = Phase()
            task = progress.add_task("putting values", total=values)
            for i in range(values):
                key = f"demo-key-{i}".encode()
                value = f"value {i} ({rng.getrandbits(64):016x})".encode()
                putter = rng.choice(nodes)
                puts.attempts += 1
                t0 = time.perf_counter()
                try:
                    await putter.put(key, value)
                except KadError as exc:
                    _log.warning("put of %r failed: %s", key, exc)
                else:
                    puts.successes += 1
                    puts.latencies_ms.append((time.perf_counter() - t0) * 1000)
                items.append((key, value, putter))
                progress.advance(task)

            # 3. Get every value from a different random node.
            gets_before = await _get_all(items, nodes, rng, progress, "getting values")
            replicas_before = _replicas(items, nodes)

            # 4. Crash a share of the nodes: close their sockets with no handoff at all.
            victims = rng.sample(nodes, min(round(count * kill_fraction), count - 1))
            task = progress.add_task(f"crashing {len(victims)} nodes", total=len(victims))
            for victim in victims:
                await victim.stop(handoff=False)
                progress.advance(task)
            dead = {id(v) for v in victims}
            survivors = [n for n in nodes if id(n) not in dead]

            replicas_after = _replicas(items, survivors)

            # 5. Get every value again, from random survivors.
            gets_after = await _get_all(items, survivors, rng, progress, "getting after the crash")

            # 6. Wait for the survivors to put every value back on k live nodes (each holder
            #    republishes once per interval; a found-dead holder is replaced sooner).
            target_after = min(config.k, len(survivors))
            task = progress.add_task("repairing replicas", total=len(items))
            repair_start = time.perf_counter()
            deadline = repair_start + 3 * republish_interval + 5
            while True:
                replicas_repaired = _replicas(items, survivors)
                whole = sum(1 for r in replicas_repaired if r >= target_after)
                progress.update(task, completed=whole)
                if whole == len(items) or time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.25)
            repair_seconds = time.perf_counter() - repair_start
            gets_repaired = await _get_all(
                items, survivors, rng, progress, "getting after the repair"
            )
            table_after = statistics.fmean(len(n.routing_table) for n in survivors)
            dead_ids = {v.node_id for v in victims}
            dead_entries = statistics.fmean(
                sum(c.node_id in dead_ids for c in n.routing_table) for n in survivors
            )
            sample = [f"{n.node_id.short()}@{format_address(n.address)}" for n in nodes[:4]]
            sample[0] += " (seed)"
            if count > len(sample):
                sample.append(f"… {count - len(sample)} more")
            report = DemoReport(
                seed=seed,
                nodes_before=count,
                nodes_after=len(survivors),
                values=values,
                table_before=table_before,
                table_after=table_after,
                dead_entries=dead_entries,
                puts=puts,
                gets_before=gets_before,
                gets_after=gets_after,
                sample=sample,
                seconds=time.perf_counter() - started,
                replicas_before=replicas_before,
                replicas_after=replicas_after,
                replicas_repaired=replicas_repaired,
                target=min(config.k, count),
                target_after=target_after,
                repair_seconds=repair_seconds,
                gets_repaired=gets_repaired,
                lookup_hops=lookup_hops,
            )
        if serve is not None:
            await serve(report, survivors)
    finally:
        for node in nodes:
            await node.stop(handoff=False)
    return report


async def _start_node(host: str, config: KadConfig) -> Node:
    try:
        return await Node.start(host, 0, config=config)
    except OSError as exc:
        raise KadError(f"cannot listen on {host}: {describe_os_error(exc)}") from exc


async def _random_lookups(
    nodes: Sequence[Node], rng: random.Random, count: int, progress: Progress
) -> list[int]:
    """Look up ``count`` random ids from random nodes; the hops each took."""
    hops: list[int] = []

    def on_event(event: Event) -> None:
        if isinstance(event, LookupDone):
            hops.append(event.hops)

    task = progress.add_task("looking up random ids", total=count)
    for _ in range(count):
        node = rng.choice(nodes)
        remove = node.add_listener(on_event)
        try:
            await node.find_node(NodeId(rng.getrandbits(256)))
        except KadError as exc:
            _log.warning("lookup failed: %s", exc)
        finally:
            remove()
        progress.advance(task)
    return hops


async def _get_all(
    items: Sequence[tuple[bytes, bytes, Node]],
    nodes: Sequence[Node],
    rng: random.Random,
    progress: Progress,
    description: str,
) -> Phase:
    """Get every item from a random node of ``nodes`` other than the one that put it."""
    phase = Phase()
    task = progress.add_task(description, total=len(items))
    for key, value, putter in items:
        getter = rng.choice(nodes)
        while getter is putter and len(nodes) > 1:
            getter = rng.choice(nodes)
        phase.attempts += 1
        t0 = time.perf_counter()
        try:
            result = await getter.get_record(key)
        except KadError as exc:
            _log.warning("get of %r failed: %s", key, exc)
        else:
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if result.queries == 0:
                phase.local += 1
            else:
                phase.hops.append(result.hops)
                phase.timeouts.append(result.timeouts)
            if result.record is not None and result.record.value == value:
                phase.successes += 1
            else:
                _log.warning("get of %r from %r found %r", key, getter, result.record)
        progress.advance(task)
    return phase


def _replica_text(counts: Sequence[int]) -> str:
    if not counts:
        return "-"
    return f"{min(counts)} / {statistics.fmean(counts):.1f} / {max(counts)}"


def _on_target_text(counts: Sequence[int], target: int) -> str:
    return f"{sum(1 for c in counts if c >= target)}/{len(counts)}"


def demo_table(report: DemoReport) -> Table:
    crashed = report.nodes_before - report.nodes_after
    table = Table(
        title=f"nautilus-kad demo (seed {report.seed})",
        caption=f"{report.seconds:.1f} s in all",
    )
    table.add_column("", style="bold")
    table.add_column("before the crash", justify="right")
    table.add_column("after the crash", justify="right")
    table.add_column("after repair", justify="right")
    before, after, repaired = report.gets_before, report.gets_after, report.gets_repaired
    survivors = f"{report.nodes_after} ({crashed} crashed)"
    table.add_row("nodes", str(report.nodes_before), survivors, survivors)
    table.add_row("values", str(report.values), str(report.values), str(report.values))
    table.add_row("put success", report.puts.success_text(), "", "")
    table.add_row(
        "replicas per value (min / mean / max)",
        _replica_text(report.replicas_before),
        _replica_text(report.replicas_after),
        _replica_text(report.replicas_repaired),
    )
    table.add_row(
        f"values on k live nodes (k = {report.target} / {report.target_after})",
        _on_target_text(report.replicas_before, report.target),
        _on_target_text(report.replicas_after, report.target_after),
        f"{_on_target_text(report.replicas_repaired, report.target_after)} "
        f"in {report.repair_seconds:.1f} s",
    )
    table.add_row(
        "routing table size (mean)",
        f"{report.table_before:.1f}",
        f"{report.table_after:.1f} ({report.dead_entries:.1f} crashed)",
        "",
    )
    table.add_row(
        "gets answered locally",
        f"{before.local}/{before.attempts}",
        f"{after.local}/{after.attempts}",
        f"{repaired.local}/{repaired.attempts}",
    )
    table.add_row(
        "get hops (mean / median)", before.hops_text(), after.hops_text(), repaired.hops_text()
    )
    table.add_row(
        "get requests timed out (in network gets)",
        before.timeouts_text(),
        after.timeouts_text(),
        repaired.timeouts_text(),
    )
    if report.lookup_hops:
        hops = report.lookup_hops
        table.add_row(
            f"random-id lookup hops (mean / median / max of {len(hops)})",
            f"{statistics.fmean(hops):.2f} / {statistics.median(hops):g} / {max(hops)}",
            "",
            "",
        )
        counts = Counter(hops)
        table.add_row(
            "random-id lookups by hops",
            "  ".join(f"{h}: {counts[h]}" for h in sorted(counts)),
            "",
            "",
        )
    table.add_row("put latency p50 / p99", report.puts.latency_text(), "", "")
    table.add_row(
        "get latency p50 / p99",
        before.latency_text(),
        after.latency_text(),
        repaired.latency_text(),
    )
    table.add_row(
        "get success", before.success_text(), after.success_text(), repaired.success_text()
    )
    return table
