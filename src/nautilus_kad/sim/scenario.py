"""Scenarios: whole runs built from joins, workloads, churn and loss.

A scenario has phases, and every measurement is labelled with the phase it started in:

1. ``join`` — nodes arrive one after another and join the way real nodes join: each is given
   the addresses of a few nodes that already joined and runs the engine's bootstrap (nothing
   is filled in from ground truth). A join that fails is retried, as a daemon would.
2. a short quiet ``settle`` period (not measured);
3. ``workload`` — lookups for random ids and puts of random keys from random nodes, as a
   Poisson stream; every finished put is read back by gets from other random nodes. With a
   :class:`ChurnModel`, nodes leave (abruptly or cleanly) and new ones arrive during this
   phase, following a session-time model.

:func:`run_scenario` runs one and returns a :class:`ScenarioResult`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..core.config import KadConfig
from ..core.ids import NodeId
from ..core.messages import Address
from .network import LatencyModel, LogNormalLatency, NetworkStats
from .simulation import (
    START_TIME,
    Operation,
    OpRecord,
    SimNode,
    Simulation,
    default_sim_config,
)

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, called as a scenario advances."""


@dataclass(frozen=True, slots=True)
class ChurnModel:
    """Nodes come and go: sessions last a Weibull-distributed time (heavy-tailed for shape
    < 1, as measured in deployed DHTs; shape 1 is exponential), arrivals are a Poisson stream
    that keeps the population steady, and ``clean_fraction`` of departures are clean leaves
    (the rest are crashes)."""

    median_session: float
    """Median session length, seconds."""
    shape: float = 0.5
    clean_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not self.median_session > 0:
            raise ValueError("the median session must be positive")
        if not self.shape > 0:
            raise ValueError("the Weibull shape must be positive")
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError("clean_fraction must lie in [0, 1]")

    @classmethod
    def with_mean(
        cls, mean_session: float, shape: float = 0.5, clean_fraction: float = 0.5
    ) -> ChurnModel:
        """The model whose sessions last ``mean_session`` seconds on average."""
        if not mean_session > 0 or not shape > 0:
            raise ValueError("the mean session and the Weibull shape must be positive")
        median = mean_session * math.log(2) ** (1 / shape) / math.gamma(1 + 1 / shape)
        return cls(median, shape, clean_fraction)

    @property
    def scale(self) -> float:
        return self.median_session / float(math.log(2) ** (1 / self.shape))

    @property
    def mean_session(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)

    def session(self, sim: Simulation) -> float:
        """Draw one session length (for a node that arrives now)."""
        return float(sim.rng.weibullvariate(self.scale, self.shape))

    def residual(self, sim: Simulation) -> float:
        """Draw the remaining session of a node found up at a random moment of a steady
        network: a length-biased session (``(L/scale)^shape`` is then Gamma(1 + 1/shape))
        times a uniform fraction. Giving nodes already up fresh sessions instead would make
        the short ones all leave at once when churn starts."""
        biased = self.scale * sim.rng.gammavariate(1 + 1 / self.shape, 1.0) ** (1 / self.shape)
        return float(sim.rng.random() * biased)

    def arrival_interval(self, sim: Simulation, population: int) -> float:
        """Time to the next arrival that keeps ``population`` steady on average."""
        return sim.rng.expovariate(population / self.mean_session)


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """Everything that defines a run; the same spec gives the same run."""

    nodes: int = 1000
    lookups: int = 1000
    puts: int = 0
    gets_per_put: int = 1
    seed: int = 1
    loss: float = 0.0
    """Independent loss probability of every datagram, for the whole run."""
    latency: LatencyModel = field(default_factory=LogNormalLatency)
    jitter: float = 0.1
    churn: ChurnModel | None = None
    join_rate: float = 100.0
    """Arrivals per virtual second during the join phase."""
    op_rate: float = 100.0
    """Lookups and puts started per virtual second during the workload (Poisson)."""
    duration: float | None = None
    """If set, the workload's lookups and puts are spread over this many virtual seconds
    instead (``op_rate`` is then ignored): what churn studies need."""
    get_delay: float = 1.0
    """Seconds between a put finishing and its gets starting."""
    seeds_per_join: int = 3
    """Bootstrap addresses a joining node is given (random nodes that already joined)."""
    join_attempts: int = 3
    settle: float = 5.0
    real_crypto: bool = False
    config: KadConfig = field(default_factory=default_sim_config)
    trace: bool = False
    """Hash every datagram into the digest (slower; for determinism checks)."""
    max_phase_time: float = 86_400.0
    """Virtual seconds after which a phase that has not finished is an error."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a scenario needs at least one node")
        if min(self.lookups, self.puts, self.gets_per_put) < 0:
            raise ValueError("operation counts cannot be negative")
        if not (self.join_rate > 0 and self.op_rate > 0):
            raise ValueError("rates must be positive")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("the workload duration must be positive")
        if self.seeds_per_join < 1 or self.join_attempts < 1:
            raise ValueError("seeds_per_join and join_attempts must be at least 1")


@dataclass(slots=True)
class ScenarioResult:
    spec: ScenarioSpec
    records: list[OpRecord]
    digest: str
    wall_seconds: float
    virtual_seconds: float
    events: int
    network: NetworkStats
    live_nodes: int
    arrivals: int
    departures: int
    aborted: int
    phase_wall: dict[str, float]
    """Wall-clock seconds spent in each phase."""


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (and restore it after).

    A simulation builds millions of long-lived objects whose garbage is freed by reference
    counting; the cyclic collector would otherwise rescan all of them again and again.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        # Everything the run allocated is still "young" to the collector: enabling it as is
        # would make its next pass scan the whole simulation once. Filing those objects with
        # the oldest generation (freeze, then unfreeze: two list splices) skips that pass.
        if not gc.get_freeze_count():  # (a caller's own frozen objects stay frozen)
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


class _Runner:
    """The mutable state of one scenario run."""

    def __init__(self, spec: ScenarioSpec, progress: Progress | None) -> None:
        self.spec = spec
        self.progress = progress
        self.sim = Simulation(
            spec.seed,
            config=spec.config,
            latency=spec.latency,
            loss=spec.loss,
            jitter=spec.jitter,
            real_crypto=spec.real_crypto,
            trace=spec.trace,
        )
        self.arrivals = 0
        self.churning = False
        self.total = 0
        self.finished = 0
        self.phase_wall: dict[str, float] = {}
        self._put_count = 0
        self.sim.on_abort(self._aborted)

    # --- helpers ----------------------------------------------------------------------

    def _report(self, force: bool = False) -> None:
        if self.progress is not None and (force or self.finished % 50 == 0):
            self.progress(self.sim.phase, self.finished, self.total)

    def _count(self, _op: Operation | None = None, amount: int = 1) -> None:
        self.finished += amount
        self._report()
        if self.finished >= self.total:
            self.sim.scheduler.stop()  # the phase is over: do not run on into idle time

    def _aborted(self, op: Operation) -> None:
        """An operation's node went down before it finished: it will never end."""
        if op.phase != "workload" or op.kind == "join":
            return
        # A put's gets will never start either.
        self._count(op, 1 + (self.spec.gets_per_put if op.kind == "put" else 0))

    def _seeds(self) -> list[Address]:
        return [n.address for n in self.sim.joined.sample(self.sim.rng, self.spec.seeds_per_join)]

    def _run_until_done(self) -> None:
        sched = self.sim.scheduler
        deadline = sched.now + self.spec.max_phase_time
        while self.finished < self.total:
            sched.run(deadline, max_events=20_000)
            if sched.now >= deadline or not len(sched):
                raise RuntimeError(
                    f"phase {self.sim.phase!r} did not finish: {self.finished} of {self.total} "
                    f"operations done after {self.spec.max_phase_time:g} virtual seconds"
                )
        self._report(force=True)

    # --- joining ----------------------------------------------------------------------

    def arrive(self, attempt: int = 1, node: SimNode | None = None) -> None:
        """A new node comes up and joins (or an earlier failed join tries again)."""
        sim = self.sim
        if node is None:
            node = sim.add_node()
            self.arrivals += 1
        elif not node.up:
            return
        seeds = self._seeds()
        if not seeds:
            # The network's first node: nobody to join through.
            sim.join(node, [], on_done=self._join_done)
            return
        op = sim.join(node, seeds, on_done=self._join_done)
        op.attempt = attempt
        if attempt > 1:
            op.detail = f"attempt {attempt}"

    def _join_done(self, op: Operation) -> None:
        assert op.record is not None
        node = op.node
        if not op.record.success and node.up:
            if op.attempt < self.spec.join_attempts:
                # Try again later with other seeds, as a daemon would.
                self.sim.scheduler.call_later(5.0, self.arrive, op.attempt + 1, node)
                return
            self.sim.crash(node)  # gave up: a node nobody knows is not part of the network
        if op.phase == "join":
            self._count(op)
        if self.churning and node.up and op.record.success:
            self._schedule_departure(node)

    # --- churn ------------------------------------------------------------------------

    def _schedule_departure(self, node: SimNode, *, residual: bool = False) -> None:
        churn = self.spec.churn
        assert churn is not None
        session = churn.residual(self.sim) if residual else churn.session(self.sim)
        self.sim.scheduler.call_later(session, self._depart, node)

    def _depart(self, node: SimNode) -> None:
        if not self.churning or not node.up:
            return
        churn = self.spec.churn
        assert churn is not None
        if self.sim.rng.random() < churn.clean_fraction:
            self.sim.leave(node)
        else:
            self.sim.crash(node)

    def _churn_arrival(self) -> None:
        if not self.churning:
            return
        churn = self.spec.churn
        assert churn is not None
        self.arrive()
        self.sim.scheduler.call_later(
            churn.arrival_interval(self.sim, self.spec.nodes), self._churn_arrival
        )

    def start_churn(self) -> None:
        churn = self.spec.churn
        if churn is None:
            return
        self.churning = True
        for node in list(self.sim.joined):
            self._schedule_departure(node, residual=True)
        self.sim.scheduler.call_later(
            churn.arrival_interval(self.sim, self.spec.nodes), self._churn_arrival
        )

    # --- workload ---------------------------------------------------------------------

    def _origin(self, exclude: SimNode | None = None) -> SimNode | None:
        joined = self.sim.joined
        if not len(joined) or (len(joined) == 1 and exclude in joined):
            return None
        while True:
            node = joined.choice(self.sim.rng)
            if node is not exclude:
                return node

    def start_op(self, kind: str) -> None:
        sim = self.sim
        origin = self._origin()
        if origin is None:
            self._count_missing()
            return
        if kind == "lookup":
            sim.lookup(origin, NodeId.random(sim.rng), on_done=self._count)
        else:
            self._put_count += 1
            key = NodeId.random(sim.rng)
            value = b"value-%d-" % self._put_count + sim.rng.randbytes(16)
            sim.put(origin, key, value, on_done=self._put_done)

    def _count_missing(self) -> None:
        # No live node to start from (everyone left): the operation cannot even start.
        self._count()

    def _put_done(self, op: Operation) -> None:
        if op.record is None or not op.record.success or op.target is None:
            self._count(op, 1 + self.spec.gets_per_put)  # nothing stored: nothing to read
            return
        self._count(op)
        for _ in range(self.spec.gets_per_put):
            self.sim.scheduler.call_later(
                self.spec.get_delay, self._start_get, op.target, op.expect, op.node
            )

    def _start_get(self, key: NodeId, value: bytes | None, putter: SimNode) -> None:
        origin = self._origin(exclude=putter)
        if origin is None:
            self._count_missing()
            return
        self.sim.get(origin, key, expect=value, on_done=self._count)

    # --- phases -----------------------------------------------------------------------

    def run(self) -> ScenarioResult:
        spec = self.spec
        sim = self.sim
        sched = sim.scheduler
        started = time.perf_counter()

        # 1. join
        tick = time.perf_counter()
        sim.phase = "join"
        self.total = spec.nodes
        self.finished = 0
        self._report(force=True)
        self.arrive()
        for i in range(1, spec.nodes):
            sched.call_at(sched.now + i / spec.join_rate, self.arrive)
        self._run_until_done()
        self.phase_wall["join"] = time.perf_counter() - tick

        # 2. settle
        sim.phase = "settle"
        sim.run_for(spec.settle)

        # 3. workload
        tick = time.perf_counter()
        sim.phase = "workload"
        ops = ["lookup"] * spec.lookups + ["put"] * spec.puts
        sim.rng.shuffle(ops)
        self.total = len(ops) + spec.puts * spec.gets_per_put
        self.finished = 0
        self._report(force=True)
        self.start_churn()
        at = sched.now
        rate = spec.op_rate
        if spec.duration is not None and ops:
            rate = len(ops) / spec.duration
        for kind in ops:
            at += sim.rng.expovariate(rate)
            sched.call_at(at, self.start_op, kind)
        self._run_until_done()
        self.churning = False
        self.phase_wall["workload"] = time.perf_counter() - tick

        return ScenarioResult(
            spec=spec,
            records=sim.records,
            digest=sim.digest(),
            wall_seconds=time.perf_counter() - started,
            virtual_seconds=sched.now - START_TIME,
            events=sched.events_run,
            network=sim.network.stats,
            live_nodes=len(sim.nodes),
            arrivals=self.arrivals,
            departures=sim.departures,
            aborted=sim.aborted,
            phase_wall=self.phase_wall,
        )


def run_scenario(
    spec: ScenarioSpec, progress: Progress | None = None, *, pause_gc: bool = True
) -> ScenarioResult:
    """Run one scenario to the end. ``progress(phase, done, total)`` is called as it goes."""
    runner = _Runner(spec, progress)
    if not pause_gc:
        return runner.run()
    with collector_paused():
        return runner.run()
