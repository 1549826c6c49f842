"""Durability experiments: do records survive when the nodes holding them die?

Two scenarios, both run on unmodified engines (replication, handoff, repair and republish are
the product's; nothing here copies a record by hand):

* **mass kill** (:func:`run_mass_kill`): a network forms, records are put, then half the
  nodes crash at once, without handing anything on. After one repair period (by default the
  holders' republish interval, one hour) we count how many live nodes hold each record and
  read every record back from a random live node.
* **churn** (:func:`run_churn`): a network forms, records are put, then nodes keep crashing
  and new ones keep arriving (exponential sessions by default, a steady population) for many
  virtual hours while random nodes read random records.

The replica counts are ground truth: how many *live* nodes' stores hold the record, whatever
the nodes believe. Results carry the count distributions, the read success, the datagrams
sent and the wall and CPU time, so a table (``benchmarks/durability.py``) and tests
(``tests/test_sim_durability.py``) are built from the same runs.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..core.config import KadConfig
from ..core.ids import NodeId
from .network import LatencyModel, LogNormalLatency
from .report import percentile
from .scenario import ChurnModel, collector_paused
from .simulation import Operation, SimNode, Simulation, default_sim_config

Progress = Callable[[str], None]
"""Called with a line of progress (what the experiment is doing)."""

RECORD_TTL = 86_400
"""The TTL records are put with (the default, 24 h)."""
_FORM_SETTLE = 30.0
"""Quiet seconds after the network forms, before any record is put."""


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    """How many live nodes hold each record, at one moment (ground truth)."""

    at: float
    """Virtual seconds since the experiment's clock started."""
    counts: tuple[int, ...]
    """One count per record, in the order the records were put."""
    k: int

    @property
    def histogram(self) -> dict[int, int]:
        """Copies → how many records have that many."""
        return dict(sorted(Counter(self.counts).items()))

    @property
    def lost(self) -> int:
        """Records no live node holds."""
        return self.counts.count(0)

    @property
    def on_k_share(self) -> float:
        """Share of records held by at least k live nodes."""
        if not self.counts:
            return math.nan
        return sum(1 for c in self.counts if c >= self.k) / len(self.counts)

    @property
    def minimum(self) -> int:
        return min(self.counts, default=0)

    def quantile(self, p: float) -> float:
        return percentile(self.counts, p)

    def brief(self) -> str:
        """``min/p1/p50/p99/max`` in one string."""
        if not self.counts:
            return "-"
        ps = (self.quantile(1), self.quantile(50), self.quantile(99))
        return f"{self.minimum}/{ps[0]:.0f}/{ps[1]:.0f}/{ps[2]:.0f}/{max(self.counts)}"


def replica_counts(sim: Simulation, keys: Sequence[NodeId], since: float = 0.0) -> ReplicaCounts:
    """Count, for each of ``keys``, the live nodes whose store holds it now."""
    now = sim.now
    index = {key: i for i, key in enumerate(keys)}
    counts = [0] * len(keys)
    for node in sim.nodes.values():
        store = node.engine.store
        for key in store.keys():  # noqa: SIM118 - a RecordStore, not a dict
            i = index.get(key)
            if i is not None and store.get(key, now) is not None:
                counts[i] += 1
    return ReplicaCounts(now - since, tuple(counts), sim.config.k)


def engine_totals(nodes: Iterable[SimNode], prefixes: tuple[str, ...]) -> dict[str, int]:
    """Engine counters summed over ``nodes`` (dead ones too), keys starting with
    ``prefixes``."""
    total: Counter[str] = Counter()
    for node in nodes:
        total.update({k: v for k, v in node.engine.stats.items() if k.startswith(prefixes)})
    return dict(sorted(total.items()))


_STAT_PREFIXES = (
    "republish.", "repair.", "replicate.", "fanout.", "handoff", "neighbours.", "publish.",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Common:
    """Settings both experiments share."""

    nodes: int = 1000
    records: int = 1000
    seed: int = 1
    config: KadConfig = field(default_factory=default_sim_config)
    latency: LatencyModel = field(default_factory=LogNormalLatency)
    loss: float = 0.0
    seeds_per_join: int = 3
    join_interval: float = 0.01
    """Seconds between arrivals while the network forms."""
    put_interval: float = 0.05
    """Seconds between puts (and between the final reads of the mass kill)."""


class _Run:
    """Plumbing both experiments share: the simulation, every node it ever had, timing."""

    def __init__(self, spec: _Common, progress: Progress | None) -> None:
        self.spec = spec
        self.progress = progress
        self.sim = Simulation(spec.seed, config=spec.config, latency=spec.latency, loss=spec.loss)
        self.every: dict[int, SimNode] = {}
        """Nodes added, until they depart for good (then only their counters are kept)."""
        self.retired: Counter[str] = Counter()
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def add(self) -> SimNode:
        node = self.sim.add_node()
        self.every[node.index] = node
        return node

    def retire(self, node: SimNode) -> None:
        """``node`` went down for good: keep its counters, let its engine go (a day of churn
        brings thousands of nodes, and each engine holds its tables)."""
        if self.every.pop(node.index, None) is not None:
            self.retired.update(engine_totals([node], _STAT_PREFIXES))

    def totals(self) -> dict[str, int]:
        """Engine counters summed over every node the run ever had."""
        total = Counter(engine_totals(self.every.values(), _STAT_PREFIXES))
        total.update(self.retired)
        return dict(sorted(total.items()))

    def seeds(self) -> list[tuple[str, int]]:
        sim = self.sim
        return [n.address for n in sim.joined.sample(sim.rng, self.spec.seeds_per_join)]

    def form(self) -> int:
        """Grow the network; nodes whose join failed go down (nobody knows them)."""
        spec, sim = self.spec, self.sim
        ops: list[Operation] = []

        def arrive() -> None:
            node = self.add()
            ops.append(sim.join(node, self.seeds()))

        for i in range(spec.nodes):
            sim.scheduler.call_later(i * spec.join_interval, arrive)
        sim.run_for(spec.nodes * spec.join_interval)
        sim.wait(ops)
        for op in ops:
            if not op.succeeded:
                sim.crash(op.node)
        sim.run_for(_FORM_SETTLE)
        self.say(f"formed: {len(sim.joined)} of {spec.nodes} nodes joined")
        return len(sim.joined)

    def put_all(self, count: int, spread: float) -> tuple[list[NodeId], list[bytes]]:
        """Put ``count`` records of random keys from random nodes, spread over ``spread``
        seconds; returns the keys and values whose put succeeded."""
        sim = self.sim
        ops: list[Operation] = []

        def put(i: int) -> None:
            if len(sim.joined):
                key = NodeId.random(sim.rng)
                value = b"record-%d-" % i + sim.rng.randbytes(8)
                ops.append(sim.put(sim.joined.choice(sim.rng), key, value))

        for i in range(count):
            sim.scheduler.call_later(i * spread / max(count, 1), put, i)
        sim.run_for(spread)
        sim.wait(ops, timeout=600.0)
        keys = [op.target for op in ops if op.succeeded and op.target is not None]
        values = [op.expect or b"" for op in ops if op.succeeded and op.target is not None]
        self.say(f"put: {len(keys)} of {count} records stored")
        return keys, values

    def times(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def _get_outcome(op: Operation) -> bool | None:
    """True/False for a finished get, None when its node died first (no verdict)."""
    if op.record is None:
        return None
    return op.record.success


# --- mass kill --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MassKillSpec(_Common):
    """Half the nodes crash at once; does one repair period put everything back?"""

    kill_fraction: float = 0.5
    settle: float = 600.0
    """Seconds between the last put and the kill (replicas settle)."""
    repair_period: float | None = None
    """Seconds between the kill and the count; None: ``config.republish_interval``."""

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.records < 1:
            raise ValueError("a mass kill needs at least 2 nodes and 1 record")
        if not 0.0 < self.kill_fraction < 1.0:
            raise ValueError("kill_fraction must lie in (0, 1)")


@dataclass(frozen=True, slots=True)
class MassKillResult:
    spec: MassKillSpec
    joined: int
    stored: int
    """Records whose put succeeded (the others are not counted anywhere below)."""
    killed: int
    repair_period: float
    before: ReplicaCounts
    """Just before the kill."""
    after_kill: ReplicaCounts
    """Right after it."""
    after_repair: ReplicaCounts
    """One repair period later."""
    timeline: list[ReplicaCounts]
    """Counts every quarter of the repair period after the kill (the last is
    ``after_repair``)."""
    reads_ok: int
    """Records read back (right value) by a get from a random live node after the repair
    period."""
    reads_lost: int
    """Reads whose node died before they ended (none here: nothing dies after the kill)."""
    datagrams_total: int
    datagrams_repair: int
    """Sent during the repair period."""
    engine_stats: dict[str, int]
    wall_seconds: float
    cpu_seconds: float
    virtual_seconds: float

    @property
    def readable_share(self) -> float:
        return self.reads_ok / self.stored if self.stored else math.nan

    @property
    def back_on_k_share(self) -> float:
        return self.after_repair.on_k_share


def run_mass_kill(spec: MassKillSpec, progress: Progress | None = None) -> MassKillResult:
    """Run the mass-kill experiment (deterministic for a given spec)."""
    with collector_paused():
        return _mass_kill(spec, progress)


def _mass_kill(spec: MassKillSpec, progress: Progress | None) -> MassKillResult:
    run = _Run(spec, progress)
    sim = run.sim
    start = sim.now
    joined = run.form()
    keys, values = run.put_all(spec.records, spec.records * spec.put_interval)
    sim.run_for(spec.settle)
    before = replica_counts(sim, keys, start)
    live = list(sim.nodes.values())
    victims = sim.rng.sample(live, round(len(live) * spec.kill_fraction))
    for node in victims:
        sim.crash(node)
    after_kill = replica_counts(sim, keys, start)
    run.say(f"killed {len(victims)} nodes: {after_kill.lost} records lost outright")
    period = spec.config.republish_interval if spec.repair_period is None else spec.repair_period
    sent = sim.network.stats.sent
    start_repair = sim.now
    timeline: list[ReplicaCounts] = []
    for quarter in range(1, 5):
        sim.run(start_repair + period * quarter / 4)
        timeline.append(replica_counts(sim, keys, start))
    after_repair = timeline[-1]
    datagrams_repair = sim.network.stats.sent - sent
    run.say(f"after {period:g} s: {100 * after_repair.on_k_share:.2f}% on k live nodes")
    gets: list[Operation] = []

    def read(i: int) -> None:
        gets.append(sim.get(sim.joined.choice(sim.rng), keys[i], expect=values[i]))

    for i in range(len(keys)):
        sim.scheduler.call_later(i * spec.put_interval, read, i)
    sim.run_for(len(keys) * spec.put_interval)
    sim.wait(gets, timeout=600.0)
    outcomes = [_get_outcome(op) for op in gets]
    wall, cpu = run.times()
    return MassKillResult(
        spec=spec,
        joined=joined,
        stored=len(keys),
        killed=len(victims),
        repair_period=period,
        before=before,
        after_kill=after_kill,
        after_repair=after_repair,
        timeline=timeline,
        reads_ok=outcomes.count(True),
        reads_lost=outcomes.count(None),
        datagrams_total=sim.network.stats.sent,
        datagrams_repair=datagrams_repair,
        engine_stats=run.totals(),
        wall_seconds=wall,
        cpu_seconds=cpu,
        virtual_seconds=sim.now - start,
    )


# --- churn ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChurnSpec(_Common):
    """Nodes keep crashing and arriving for ``hours``; random nodes read random records."""

    hours: float = 24.0
    mean_session: float = 1800.0
    """Mean session length, seconds (sessions are Weibull with ``shape``; 1 = exponential)."""
    shape: float = 1.0
    clean_fraction: float = 0.0
    """Share of departures that are clean leaves (the simulator's leave: the node finishes
    its own operations, then goes down). 0: every departure is a crash."""
    gets: int = 2000
    put_window: float = 600.0
    """Records are put during the first this-many seconds of churn."""
    get_margin: float = 300.0
    """Reads start this long after the last put and stop this long before the end."""
    snapshot_interval: float = 3600.0
    """Seconds between replica-count snapshots."""

    def __post_init__(self) -> None:
        if self.nodes < 2 or self.records < 1 or self.gets < 0:
            raise ValueError("churn needs at least 2 nodes and 1 record")
        if not self.hours * 3600 > self.put_window + 2 * self.get_margin:
            raise ValueError("the run is too short for its put window and read margins")

    def churn_model(self) -> ChurnModel:
        return ChurnModel.with_mean(self.mean_session, self.shape, self.clean_fraction)


@dataclass(frozen=True, slots=True)
class HourRow:
    """One snapshot interval of a churn run."""

    end: float
    """Virtual seconds since churn started."""
    live: int
    gets: int
    gets_ok: int
    replicas: ReplicaCounts
    """Copies of the records still within their TTL."""
    datagrams: int


@dataclass(frozen=True, slots=True)
class ChurnResult:
    spec: ChurnSpec
    joined: int
    stored: int
    gets: int
    """Reads that ended (their node did not die first)."""
    gets_ok: int
    gets_lost: int
    """Reads abandoned because their node died first (no verdict on the record)."""
    failures: dict[str, int]
    """Failed reads by reason."""
    rows: list[HourRow]
    arrivals: int
    departures: int
    datagrams_total: int
    datagrams_churn: int
    """Sent while churn ran."""
    node_seconds: float
    """Live nodes times seconds while churn ran (for a per-node datagram rate)."""
    engine_stats: dict[str, int]
    wall_seconds: float
    cpu_seconds: float
    virtual_seconds: float

    @property
    def success_share(self) -> float:
        return self.gets_ok / self.gets if self.gets else math.nan

    @property
    def datagrams_per_node_second(self) -> float:
        return self.datagrams_churn / self.node_seconds if self.node_seconds else math.nan


def run_churn(spec: ChurnSpec, progress: Progress | None = None) -> ChurnResult:
    """Run the churn experiment (deterministic for a given spec)."""
    with collector_paused():
        return _Churn(spec, progress).run()


class _Churn(_Run):
    spec: ChurnSpec

    def __init__(self, spec: ChurnSpec, progress: Progress | None) -> None:
        super().__init__(spec, progress)
        self.model = spec.churn_model()
        self.churning = False
        self.arrivals = 0
        self.departures = 0
        self.keys: list[NodeId] = []
        self.values: list[bytes] = []
        self.expires: list[float] = []
        self.gets: list[Operation] = []
        self.node_seconds = 0.0
        self._last_count = (0.0, 0)

    # population bookkeeping for the per-node rate
    def _tally(self) -> None:
        now, live = self.sim.now, len(self.sim.nodes)
        at, before = self._last_count
        if self.churning:
            self.node_seconds += (now - at) * before
        self._last_count = (now, live)

    def _arrive(self, attempt: int = 1, node: SimNode | None = None) -> None:
        sim = self.sim
        if node is None:
            if not self.churning:
                return
            self._tally()
            node = self.add()
            self.arrivals += 1
            sim.scheduler.call_later(
                self.model.arrival_interval(sim, self.spec.nodes), self._arrive
            )
        elif not node.up:
            return
        op = sim.join(node, self.seeds(), on_done=self._joined)
        op.attempt = attempt

    def _joined(self, op: Operation) -> None:
        node = op.node
        if not node.up:
            return
        if op.succeeded:
            self.sim.scheduler.call_later(self.model.session(self.sim), self._depart, node)
        elif op.attempt < 3:
            self.sim.scheduler.call_later(5.0, self._arrive, op.attempt + 1, node)
        else:
            self._tally()
            self.sim.crash(node)
            self.retire(node)

    def _depart(self, node: SimNode) -> None:
        if not self.churning or not node.up:
            return
        self._tally()
        self.departures += 1
        if self.sim.rng.random() < self.model.clean_fraction:
            self.sim.leave(node)
        else:
            self.sim.crash(node)
        self.retire(node)

    def _unexpired(self) -> list[NodeId]:
        """The records still within their TTL (a day-long run outlives the first ones)."""
        now = self.sim.now
        return [key for key, end in zip(self.keys, self.expires, strict=True) if end > now]

    def _read(self) -> None:
        sim = self.sim
        if not self.keys or not len(sim.joined):
            return
        i = sim.rng.randrange(len(self.keys))
        origin = sim.joined.choice(sim.rng)
        self.gets.append(sim.get(origin, self.keys[i], expect=self.values[i]))

    def run(self) -> ChurnResult:
        spec, sim = self.spec, self.sim
        sched = sim.scheduler
        origin = sim.now
        joined = self.form()
        # churn starts
        self.churning = True
        start = sim.now
        self._last_count = (start, len(sim.nodes))
        for node in list(sim.joined):
            sched.call_later(self.model.residual(sim), self._depart, node)
        sched.call_later(self.model.arrival_interval(sim, spec.nodes), self._arrive)
        end = start + spec.hours * 3600
        puts: list[Operation] = []

        def put(i: int) -> None:
            if len(sim.joined):
                key = NodeId.random(sim.rng)
                value = b"record-%d-" % i + sim.rng.randbytes(8)
                origin = sim.joined.choice(sim.rng)
                puts.append(sim.put(origin, key, value, ttl=RECORD_TTL, on_done=stored))

        def stored(op: Operation) -> None:
            if op.succeeded and op.target is not None:
                self.keys.append(op.target)
                self.values.append(op.expect or b"")
                self.expires.append(op.start + RECORD_TTL)

        for i in range(spec.records):
            sched.call_at(start + i * spec.put_window / spec.records, put, i)
        first = start + spec.put_window + spec.get_margin
        span = end - spec.get_margin - first
        for i in range(spec.gets):
            sched.call_at(first + span * (i + 0.5) / spec.gets, self._read)
        sent = sim.network.stats.sent
        rows: list[HourRow] = []
        at = start
        done_before = 0
        while at < end:
            at = min(at + spec.snapshot_interval, end)
            row_sent = sim.network.stats.sent
            sim.run(at)
            finished = [op for op in self.gets[done_before:] if op.record is not None]
            # reads are short: those started this interval have ended (or died) by now
            done_before = len(self.gets)
            rows.append(
                HourRow(
                    end=at - start,
                    live=len(sim.nodes),
                    gets=len(finished),
                    gets_ok=sum(1 for op in finished if op.succeeded),
                    replicas=replica_counts(sim, self._unexpired(), start),
                    datagrams=sim.network.stats.sent - row_sent,
                )
            )
            row = rows[-1]
            self.say(
                f"{row.end / 3600:5.1f} h: {row.live} live, reads {row.gets_ok}/{row.gets}, "
                f"copies min/p1/p50/p99/max {row.replicas.brief()}"
            )
        self._tally()
        self.churning = False
        datagrams_churn = sim.network.stats.sent - sent
        sim.wait(self.gets, timeout=600.0)
        outcomes = [_get_outcome(op) for op in self.gets]
        failures = Counter(
            op.record.detail for op in self.gets if op.record is not None and not op.succeeded
        )
        wall, cpu = self.times()
        return ChurnResult(
            spec=spec,
            joined=joined,
            stored=len(self.keys),
            gets=outcomes.count(True) + outcomes.count(False),
            gets_ok=outcomes.count(True),
            gets_lost=outcomes.count(None),
            failures=dict(failures),
            rows=rows,
            arrivals=self.arrivals,
            departures=self.departures,
            datagrams_total=sim.network.stats.sent,
            datagrams_churn=datagrams_churn,
            node_seconds=self.node_seconds,
            engine_stats=self.totals(),
            wall_seconds=wall,
            cpu_seconds=cpu,
            virtual_seconds=sim.now - origin,
        )
