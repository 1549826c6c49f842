"""The adversarial scenario: lookup success against hostile nodes, for d disjoint paths.

One network of honest nodes joins once (as in :mod:`..scenario`); then, for each behaviour and
each malicious level, a set of nodes turns hostile (:mod:`.nodes`, answers from
:mod:`.answers`; or Sybils placed next to the target keys), and for each number of disjoint
paths ``d`` a batch
of FIND_NODE lookups and FIND_VALUE gets runs from honest nodes that have not looked anything
up before. The malicious sets are nested (the first 10% are also among the first 20%), and the
nodes that turn hostile behaved honestly while the network formed, as a patient attacker does.

Every lookup and get is scored twice against ground truth (:mod:`.scoring`):
ours (the lookup's result holds the honest node closest to the target; the get finds the
value, stored beforehand on the honest nodes among the key's k closest live nodes) and the
paper's strict one (some path got there without querying a hostile node).

Messages are the requests the initiator sent for the operation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...core.config import KadConfig
from ...core.events import GetDone, LookupDone
from ...core.ids import NodeId
from ...core.lookup_disjoint import AnyLookup
from ...core.messages import Contact
from ...core.records import Record, make_immutable
from ..network import LatencyModel, LogNormalLatency
from ..scenario import collector_paused
from ..simulation import Operation, SimNode, Simulation, default_sim_config
from .answers import ANSWERING, MISROUTE
from .answers import BEHAVIOURS as HOSTILE_BEHAVIOURS
from .nodes import Colluders, sybil_identity, turn_honest, turn_hostile
from .scoring import lookup_ok, strict_ok

SYBIL = "sybil"
BEHAVIOURS = (*HOSTILE_BEHAVIOURS, SYBIL)

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AdversarialSpec:
    """Everything that defines an adversarial run; the same spec gives the same run."""

    nodes: int = 1000
    behaviours: tuple[str, ...] = (MISROUTE,)
    """Measured one after another on the same network (``sybil`` last: its nodes stay)."""
    levels: tuple[float, ...] = (0.1, 0.2, 0.3)
    """Malicious fractions of the nodes; for ``sybil``, Sybils per target key."""
    paths: tuple[int, ...] = (1, 2, 4, 8)
    lookups: int = 200
    """Lookups per (level, d) cell, and as many gets."""
    sybil_keys: int = 10
    """``sybil`` only: target keys that get Sybils (the cell's lookups and gets aim at them)."""
    sybil_behaviour: str = MISROUTE
    """``sybil`` only: what the Sybils answer (one of the answering behaviours)."""
    sybil_prefix: int = 0
    """``sybil`` only: bits a Sybil's id shares with its key (0: log2(nodes) + 8, nearer the
    key than every honest node but with rare exceptions)."""
    seed: int = 1
    latency: LatencyModel = field(default_factory=LogNormalLatency)
    op_rate: float = 200.0
    """Operations started per virtual second within a cell."""
    config: KadConfig = field(default_factory=default_sim_config)
    join_rate: float = 100.0

    def __post_init__(self) -> None:
        if not self.behaviours or any(b not in BEHAVIOURS for b in self.behaviours):
            raise ValueError(f"behaviours must be among {', '.join(BEHAVIOURS)}")
        if len(set(self.behaviours)) != len(self.behaviours):
            raise ValueError("a behaviour is listed twice")
        if self.sybil_behaviour not in ANSWERING:
            raise ValueError(f"sybil behaviour must be one of {', '.join(ANSWERING)}")
        if self.nodes < 10 or self.lookups < 1:
            raise ValueError("need at least 10 nodes and 1 lookup per cell")
        if not self.levels or not self.paths:
            raise ValueError("need at least one level and one path count")
        if any(not 1 <= d <= 16 for d in self.paths):
            raise ValueError("paths must lie in 1..16")
        if SYBIL in self.behaviours:
            if any(s < 0 or s != int(s) for s in self.levels):
                raise ValueError("sybil levels are whole numbers of Sybils per key")
            if len(self.behaviours) > 1:
                raise ValueError("sybil levels count Sybils: run sybil on its own")
        elif any(not 0 <= f < 1 for f in self.levels):
            raise ValueError("malicious fractions must lie in [0, 1)")


@dataclass(frozen=True, slots=True)
class Cell:
    """The measurements at one (behaviour, level, d)."""

    behaviour: str
    level: float
    paths: int
    lookups: int
    lookup_success: int
    gets: int
    get_success: int
    lookup_strict: int
    """Lookups that succeed by the paper's strict measure."""
    get_strict: int
    lookup_messages: float
    """Mean requests per lookup."""
    get_messages: float
    lookup_hops: float
    """Median hops of the lookups."""
    lookup_latency: float
    """Median virtual seconds a lookup took."""
    malicious: int
    """Hostile nodes during the cell."""

    @property
    def lookup_rate(self) -> float:
        return self.lookup_success / self.lookups if self.lookups else math.nan

    @property
    def get_rate(self) -> float:
        return self.get_success / self.gets if self.gets else math.nan

    @property
    def lookup_strict_rate(self) -> float:
        return self.lookup_strict / self.lookups if self.lookups else math.nan

    @property
    def get_strict_rate(self) -> float:
        return self.get_strict / self.gets if self.gets else math.nan


@dataclass(slots=True)
class AdversarialResult:
    spec: AdversarialSpec
    cells: list[Cell]
    join_cpu: float
    """CPU seconds the join took."""
    cells_cpu: float
    joined: int
    digest: str


class _Runner:
    def __init__(self, spec: AdversarialSpec, progress: Progress | None) -> None:
        self.spec = spec
        self.progress = progress
        self.sim = Simulation(spec.seed, config=spec.config, latency=spec.latency)
        self.rng = random.Random(spec.seed * 7919 + 1)
        self.colluders = Colluders(spec.config.k, honest=self.honest_contacts)
        self.hostile: set[int] = set()
        """Indexes of the hostile nodes."""
        self.fresh: list[SimNode] = []
        """Honest nodes that have not started an operation yet (the next initiators)."""
        self.keys = 0
        self.by_id: dict[int, SimNode] = {}
        self._truth: dict[int, list[NodeId]] = {}
        self._states: dict[int, AnyLookup] = {}
        """id(operation) → its lookup's state machine, for the strict scoring."""
        """Ground truth of the running cell (the hostile set is fixed within a cell)."""

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    # --- the network ----------------------------------------------------------------------

    def join(self) -> None:
        spec = self.spec
        sim = self.sim
        self.say(f"joining {spec.nodes} nodes")
        ops = sim.grow(spec.nodes, interval=1 / spec.join_rate)
        failed = sum(1 for op in ops if not op.succeeded)
        if failed:
            self.say(f"{failed} joins failed")
        sim.run_for(5.0)
        self.by_id = {n.node_id: n for n in sim.nodes.values()}
        self.fresh = list(sim.joined)
        self.rng.shuffle(self.fresh)

    def set_hostile(self, chosen: Sequence[SimNode], behaviour: str) -> None:
        for node in chosen:
            turn_hostile(node, behaviour, self.colluders)
            self.hostile.add(node.index)

    def clear_hostile(self) -> None:
        for index in sorted(self.hostile):
            node = self.sim.nodes.get(index)
            if node is not None:
                turn_honest(node)
        self.hostile.clear()

    def honest_closest(self, target: NodeId) -> list[NodeId]:
        """The ``k`` honest live nodes nearest ``target``: ground truth."""
        sim = self.sim
        k = sim.config.k
        count = 4 * k
        while True:
            ids = sim.live.closest(target, min(count, len(sim.live)))
            nodes = [self.by_id[i] for i in ids]
            honest = [n.node_id for n in nodes if n.index not in self.hostile]
            if len(honest) >= k or count >= len(sim.live):
                return honest[:k]
            count *= 4

    def truth(self, target: NodeId) -> list[NodeId]:
        found = self._truth.get(target)
        if found is None:
            found = self._truth[target] = self.honest_closest(target)
        return found

    def honest_contacts(self, target: NodeId) -> list[Contact]:
        """Ground truth with addresses: what forging colluders know (they can look it up)."""
        by_id = self.by_id
        return [Contact(i, *by_id[i].address) for i in self.truth(target)]

    def initiator(self, avoid: set[int]) -> SimNode:
        """An honest node that has not looked anything up yet (reused once none is left)."""
        while self.fresh:
            node = self.fresh.pop()
            if node.index not in self.hostile and node.node_id not in avoid and node.up:
                return node
        pool = [n for n in self.sim.joined if n.index not in self.hostile]
        while True:
            node = pool[self.rng.randrange(len(pool))]
            if node.node_id not in avoid:
                return node

    # --- one cell -------------------------------------------------------------------------

    def new_record(self) -> Record:
        """An immutable record (key = SHA-256(value)): a colluder can withhold it but not
        forge it, and every reader validates what it gets."""
        self.keys += 1
        return make_immutable(b"adv-%d-" % self.keys + self.rng.randbytes(16), 86_400)

    def place(self, record: Record) -> Record:
        """Store ``record`` on the honest nodes among its key's k closest directly: a put
        that succeeded before the attack began."""
        now = self.sim.now
        for node_id in self.honest_closest(record.key):
            self.by_id[node_id].engine.store.put(record, now, now + record.ttl)
        return record

    def cell(
        self,
        behaviour: str,
        level: float,
        paths: int,
        keys: dict[NodeId, Record] | None = None,
    ) -> Cell:
        """Run one cell: ``lookups`` lookups and as many gets on ``paths`` paths. Random
        targets (a fresh record placed for each get), or only ``keys`` (with their values)."""
        sim = self.sim
        rng = self.rng
        lookups: list[tuple[Operation, NodeId]] = []
        gets: list[Operation] = []
        self._truth = {}
        self.colluders.forget_answers()
        truth = self.truth

        targets = list(keys) if keys else []
        plan: list[tuple[str, NodeId, SimNode, bytes]] = []
        for i in range(self.spec.lookups):
            if keys:
                target = key = targets[i % len(targets)]
                value = keys[key].value
            else:
                record = self.place(self.new_record())
                target, key, value = NodeId.random(rng), record.key, record.value
            origin = self.initiator(set(truth(key)) | set(truth(target)))
            plan.append(("lookup", target, origin, b""))
            plan.append(("get", key, origin, value))
        at = sim.now
        for kind, target, origin, value in plan:
            at += rng.expovariate(self.spec.op_rate)
            sim.scheduler.call_at(
                at, self._start, kind, target, origin, value, paths, lookups, gets
            )
        sim.run(at)
        ops = [op for op, _ in lookups] + gets
        if not sim.wait(ops, timeout=600.0):
            stuck = [op for op in ops if op.record is None and not op.aborted]
            named = ", ".join(
                f"{op.kind} from node {op.node.index} for {op.target!r} on {paths} paths"
                for op in stuck[:5]
            )
            raise RuntimeError(
                f"adversarial cell did not finish in 600 virtual seconds: "
                f"{len(stuck)} operations still running ({named})"
            )
        ok_lookups = strict_lookups = 0
        hostile = self.colluders
        hops: list[int] = []
        latencies: list[float] = []
        lookup_msgs = 0
        for op, target in lookups:
            event = op.result
            if isinstance(event, LookupDone):
                goal = truth(target)
                ok_lookups += lookup_ok(event, goal)
                state = self._states.get(id(op))
                strict_lookups += state is not None and strict_ok(state, hostile, set(goal))
                hops.append(event.hops)
                lookup_msgs += event.queries
            if op.record is not None:
                latencies.append(op.record.latency)
        get_msgs = 0
        ok_gets = strict_gets = 0
        for op in gets:
            event = op.result
            if isinstance(event, GetDone):
                get_msgs += event.queries
                ok_gets += op.succeeded
                state = self._states.get(id(op))
                assert op.target is not None
                holders = set(truth(op.target))
                strict_gets += (
                    op.succeeded and state is not None and strict_ok(state, hostile, holders)
                )
        self._states.clear()
        hops.sort()
        latencies.sort()
        return Cell(
            behaviour=behaviour,
            level=level,
            paths=paths,
            lookups=len(lookups),
            lookup_success=ok_lookups,
            gets=len(gets),
            get_success=ok_gets,
            lookup_strict=strict_lookups,
            get_strict=strict_gets,
            lookup_messages=lookup_msgs / max(1, len(lookups)),
            get_messages=get_msgs / max(1, len(gets)),
            lookup_hops=float(hops[len(hops) // 2]) if hops else math.nan,
            lookup_latency=latencies[len(latencies) // 2] if latencies else math.nan,
            malicious=len(self.hostile),
        )

    def _start(
        self,
        kind: str,
        target: NodeId,
        origin: SimNode,
        value: bytes,
        paths: int,
        lookups: list[tuple[Operation, NodeId]],
        gets: list[Operation],
    ) -> None:
        if kind == "lookup":
            op = self.sim.lookup(origin, target, paths=paths)
            lookups.append((op, target))
        else:
            op = self.sim.get(origin, target, expect=value, paths=paths)
            gets.append(op)
        state = origin.engine.lookup_state(op.qid)
        if state is not None:
            self._states[id(op)] = state

    # --- the run --------------------------------------------------------------------------

    def run(self) -> AdversarialResult:
        spec = self.spec
        tick = time.process_time()
        self.join()
        join_cpu = time.process_time() - tick
        tick = time.process_time()
        cells: list[Cell] = []
        order = list(self.sim.joined)
        self.rng.shuffle(order)
        for behaviour in spec.behaviours:
            if behaviour == SYBIL:
                cells.extend(self.run_sybils())
                continue
            for level in spec.levels:
                self.clear_hostile()
                self.set_hostile(order[: round(level * len(order))], behaviour)
                for paths in spec.paths:
                    cells.append(self.cell(behaviour, level, paths))
                    self.say(_cell_line(cells[-1]))
            self.clear_hostile()
        return AdversarialResult(
            spec, cells, join_cpu, time.process_time() - tick, len(self.sim.joined),
            self.sim.digest(),
        )  # fmt: skip

    def run_sybils(self) -> list[Cell]:
        """Sybils arrive next to ``sybil_keys`` keys (whose records the honest k closest
        already hold), level by level (cumulatively), and then misroute as colluders."""
        spec = self.spec
        sim = self.sim
        rng = self.rng
        records = [self.place(self.new_record()) for _ in range(spec.sybil_keys)]
        values = {record.key: record for record in records}
        keys = list(values)
        prefix = spec.sybil_prefix or math.ceil(math.log2(spec.nodes)) + 8
        cells: list[Cell] = []
        placed = 0
        for level in spec.levels:
            want = int(level)
            joins: list[tuple[SimNode, Operation]] = []
            for _ in range(want - placed):
                for key in keys:
                    node = sim.add_node(identity=sybil_identity(key, prefix, rng))
                    self.by_id[node.node_id] = node
                    seeds = [n.address for n in sim.joined.sample(rng, 3)]
                    joins.append((node, sim.join(node, seeds)))
            placed = max(placed, want)
            sim.wait([op for _, op in joins])
            for node, _ in joins:
                self.set_hostile([node], spec.sybil_behaviour)
            for paths in spec.paths:
                cells.append(self.cell(SYBIL, level, paths, values))
                self.say(_cell_line(cells[-1]))
        return cells


def _cell_line(cell: Cell) -> str:
    return (
        f"{cell.behaviour} level {cell.level:g} d={cell.paths}: "
        f"lookups {100 * cell.lookup_rate:.1f}% (strict {100 * cell.lookup_strict_rate:.1f}%) "
        f"gets {100 * cell.get_rate:.1f}% (strict {100 * cell.get_strict_rate:.1f}%) "
        f"msgs {cell.lookup_messages:.0f}/{cell.get_messages:.0f} "
        f"latency p50 {1000 * cell.lookup_latency:.0f} ms"
    )


def run_adversarial(spec: AdversarialSpec, progress: Progress | None = None) -> AdversarialResult:
    """Join the network once, then measure every (level, d) cell."""
    with collector_paused():
        return _Runner(spec, progress).run()
