"""Values larger than a datagram in the simulator: the same plans as the asyncio node.

:class:`BlobPut` and :class:`BlobGet` drive :class:`~nautilus_kad.core.blobflow.PutPlan` and
:class:`~nautilus_kad.core.blobflow.GetPlan` with simulator operations (lookups, STOREs on
known nodes, gets), callback by callback on the virtual clock, exactly as
:mod:`nautilus_kad.aio.blobs` drives them with asyncio tasks: the pieces are ordinary
immutable records, so replication, repair and expiry are the unmodified engines'.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ..core.blob import BlobConfig, BlobFormatError, MissingChunksError, build_tree, is_manifest
from ..core.blobflow import GetPlan, Lookup, PutPlan
from ..core.config import KadConfig
from ..core.events import GetDone, LookupDone, PutDone
from ..core.ids import NodeId
from ..core.limits import OPEN_VALUE_LIMIT
from ..core.records import Record, RecordKind
from .durability import MassKillSpec, ReplicaCounts, _Run, replica_counts
from .scenario import collector_paused
from .simulation import Operation, SimNode, Simulation, default_sim_config


class BlobPut:
    """Put ``value`` under ``key`` from ``node``: its pieces first, then the open record
    holding the root manifest. ``done`` and ``ok`` tell how it went."""

    def __init__(
        self,
        sim: Simulation,
        node: SimNode,
        key: NodeId,
        value: bytes,
        *,
        ttl: int = 86_400,
        config: BlobConfig | None = None,
        on_done: Callable[[BlobPut], object] | None = None,
    ) -> None:
        self.sim, self.node, self.key, self.ttl = sim, node, key, ttl
        self.config = config or BlobConfig()
        self.tree = build_tree(value, OPEN_VALUE_LIMIT, self.config)
        self.plan = PutPlan([k for k, _ in self.tree.pieces], sim.config.k, self.config.in_flight)
        self.on_done = on_done
        self.done = False
        self.ok = False
        self.root_acks = 0
        self._pump()

    @property
    def piece_keys(self) -> list[NodeId]:
        return [key for key, _ in self.tree.pieces]

    def _pump(self) -> None:
        if not self.node.up:
            self._finish(False)
            return
        plan = self.plan
        for action in plan.next_actions():
            if isinstance(action, Lookup):
                target = action.target
                self.sim.lookup(self.node, target, partial(self._looked_up, target))
            else:
                key, data = self.tree.pieces[action.index]
                record = Record(key, data, 0, self.ttl, RecordKind.IMMUTABLE)
                self.sim.store_at(
                    self.node,
                    record,
                    action.contacts,
                    partial(self._stored, action.index),
                )
        if plan.done:
            quorum = self.sim.config.store_quorum
            if min(plan.acks(), default=quorum) < quorum:
                self._finish(False)
                return
            self.sim.put(self.node, self.key, self.tree.root, self.ttl, self._root_stored)

    def _looked_up(self, target: NodeId, op: Operation) -> None:
        event = op.result
        self.plan.on_lookup(target, event.contacts if isinstance(event, LookupDone) else ())
        self._pump()

    def _stored(self, index: int, op: Operation) -> None:
        event = op.result
        self.plan.on_stored(index, event.acks if isinstance(event, PutDone) else 0)
        self._pump()

    def _root_stored(self, op: Operation) -> None:
        event = op.result
        self.root_acks = event.acks if isinstance(event, PutDone) else 0
        self._finish(self.root_acks >= self.sim.config.store_quorum)

    def _finish(self, ok: bool) -> None:
        if self.done:
            return
        self.done, self.ok = True, ok
        if self.on_done is not None:
            self.on_done(self)


class BlobGet:
    """Get the value under ``key`` from ``node``, fetching and checking every piece.
    ``value`` is set when it succeeded, ``error`` says why it did not."""

    def __init__(
        self,
        sim: Simulation,
        node: SimNode,
        key: NodeId,
        *,
        config: BlobConfig | None = None,
        on_done: Callable[[BlobGet], object] | None = None,
    ) -> None:
        self.sim, self.node, self.key = sim, node, key
        self.config = config or BlobConfig()
        self.on_done = on_done
        self.plan: GetPlan | None = None
        self.done = False
        self.value: bytes | None = None
        self.error = ""
        sim.get(node, key, on_done=self._root)

    def _root(self, op: Operation) -> None:
        event = op.result
        record = event.record if isinstance(event, GetDone) else None
        if record is None:
            self._finish(None, "not found")
            return
        if not is_manifest(record.value):
            self._finish(record.value, "")
            return
        try:
            self.plan = GetPlan(self.key, record.value, self.config)
        except BlobFormatError as exc:
            self._finish(None, str(exc))
            return
        self._pump()

    def _pump(self) -> None:
        plan = self.plan
        assert plan is not None
        if not self.node.up:
            self._finish(None, "reader went down")
            return
        for key in plan.next_fetches():
            self.sim.get(self.node, key, on_done=partial(self._fetched, key))
        if plan.done and not self.done:
            try:
                self._finish(plan.result(), "")
            except (MissingChunksError, BlobFormatError) as exc:
                self._finish(None, str(exc))

    def _fetched(self, key: NodeId, op: Operation) -> None:
        assert self.plan is not None
        event = op.result
        record = event.record if isinstance(event, GetDone) else None
        try:
            self.plan.on_fetched(key, None if record is None else record.value)
        except BlobFormatError as exc:
            self._finish(None, str(exc))
            return
        self._pump()

    def _finish(self, value: bytes | None, error: str) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        if self.on_done is not None:
            self.on_done(self)


# --- the experiment: large values survive the loss of half the nodes --------------------------


@dataclass(frozen=True, slots=True)
class BlobMassKillSpec:
    """``values`` values of ``size`` bytes are put from random nodes; ``settle`` seconds
    later ``kill_fraction`` of the nodes crash at once; after one repair period every value
    is read back, piece by piece, from a random live node."""

    nodes: int = 500
    values: int = 20
    size: int = 64 * 1024
    kill_fraction: float = 0.5
    seed: int = 1
    config: KadConfig = field(default_factory=default_sim_config)
    settle: float = 600.0
    repair_period: float | None = None
    """None: ``config.republish_interval`` (1 h)."""
    put_interval: float = 5.0
    """Seconds between the puts' starts (and between the final reads)."""


@dataclass(frozen=True, slots=True)
class BlobMassKillResult:
    spec: BlobMassKillSpec
    joined: int
    stored: int
    """Values whose put succeeded (every piece and the root on a quorum)."""
    pieces: int
    """Records per value: pieces and the root."""
    killed: int
    before: ReplicaCounts
    """Copies of every record (pieces and roots) just before the kill."""
    after_kill: ReplicaCounts
    after_repair: ReplicaCounts
    reads_ok: int
    """Values read back whole and verified after the repair period."""
    read_errors: tuple[str, ...]
    datagrams: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def readable_share(self) -> float:
        return self.reads_ok / self.stored if self.stored else math.nan


def run_blob_mass_kill(
    spec: BlobMassKillSpec, progress: Callable[[str], None] | None = None
) -> BlobMassKillResult:
    """Run the large-value mass kill (deterministic for a given spec)."""
    with collector_paused():
        return _blob_mass_kill(spec, progress)


def _drive(sim: Simulation, flows: list[BlobPut] | list[BlobGet], limit: float) -> None:
    end = sim.now + limit
    while not all(flow.done for flow in flows) and sim.now < end:
        sim.run_for(5.0)


def _blob_mass_kill(
    spec: BlobMassKillSpec, progress: Callable[[str], None] | None
) -> BlobMassKillResult:
    common = MassKillSpec(nodes=spec.nodes, records=1, seed=spec.seed, config=spec.config)
    run = _Run(common, progress)
    sim = run.sim
    start = sim.now
    joined = run.form()
    puts: list[BlobPut] = []
    values: list[bytes] = []

    def put(i: int) -> None:
        value = sim.rng.randbytes(spec.size)
        values.append(value)
        puts.append(BlobPut(sim, sim.joined.choice(sim.rng), NodeId.random(sim.rng), value))

    for i in range(spec.values):
        sim.scheduler.call_later(i * spec.put_interval, put, i)
    sim.run_for(spec.values * spec.put_interval)
    _drive(sim, puts, 3600.0)
    stored = [p for p in puts if p.ok]
    run.say(f"put: {len(stored)} of {spec.values} values of {spec.size} bytes stored")
    keys = [key for p in stored for key in (*p.piece_keys, p.key)]
    sim.run_for(spec.settle)
    before = replica_counts(sim, keys, start)
    live = list(sim.nodes.values())
    victims = sim.rng.sample(live, round(len(live) * spec.kill_fraction))
    for node in victims:
        sim.crash(node)
    after_kill = replica_counts(sim, keys, start)
    run.say(f"killed {len(victims)} nodes: {after_kill.lost} records lost outright")
    period = spec.config.republish_interval if spec.repair_period is None else spec.repair_period
    sim.run_for(period)
    after_repair = replica_counts(sim, keys, start)
    gets: list[BlobGet] = []
    index = {id(p): values[i] for i, p in enumerate(puts)}

    def read(p: BlobPut) -> None:
        gets.append(BlobGet(sim, sim.joined.choice(sim.rng), p.key))

    for i, p in enumerate(stored):
        sim.scheduler.call_later(i * spec.put_interval, read, p)
    sim.run_for(len(stored) * spec.put_interval)
    _drive(sim, gets, 3600.0)
    expected = [index[id(p)] for p in stored]
    reads_ok = sum(1 for g, v in zip(gets, expected, strict=True) if g.value == v)
    errors = tuple(
        g.error or "wrong value" for g, v in zip(gets, expected, strict=True) if g.value != v
    )
    run.say(f"after {period:g} s: {reads_ok} of {len(stored)} values read back whole")
    wall, cpu = run.times()
    return BlobMassKillResult(
        spec=spec,
        joined=joined,
        stored=len(stored),
        pieces=len(stored[0].piece_keys) + 1 if stored else 0,
        killed=len(victims),
        before=before,
        after_kill=after_kill,
        after_repair=after_repair,
        reads_ok=reads_ok,
        read_errors=errors,
        datagrams=sim.network.stats.sent,
        wall_seconds=wall,
        cpu_seconds=cpu,
    )
