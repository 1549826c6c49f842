"""The simulator's driver: many :class:`~nautilus_kad.core.engine.KadEngine` on one clock.

A :class:`Simulation` owns a :class:`~.scheduler.Scheduler`, a :class:`~.network.Network` and
the simulated nodes. Each :class:`SimNode` is one unmodified engine plus the plumbing the
asyncio driver also has: feed it datagrams and timer calls, send what it queues, arm its next
timer, and collect its events. All protocol logic stays in the engine.

Every command (join, lookup, put, get, ping) returns an :class:`Operation`; when the engine reports
its end, the operation gets an :class:`OpRecord` with the measurements (hops, messages,
virtual latency, success, and for lookups whether the result is the true k closest among all
live ids).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..core.config import KadConfig
from ..core.engine import KadEngine
from ..core.events import (
    BootstrapDone,
    Event,
    GetDone,
    LeaveDone,
    LookupDone,
    PingDone,
    PutDone,
    QueryFailed,
)
from ..core.identity import Identity
from ..core.ids import ID_BITS, NodeId
from ..core.messages import Address, Contact
from ..core.records import Record
from .auth import SimAuthenticator, SimKeyring
from .nat import NatBox, NatType
from .network import Endpoint, LatencyModel, Network
from .scheduler import Scheduler

START_TIME = 1_000_000.0
"""Virtual time at which every simulation starts (seconds; any value works)."""

_INF = math.inf
_REQUEST_KEYS = ("tx.request.PING", "tx.request.FIND_NODE", "tx.request.FIND_VALUE",
                 "tx.request.STORE")  # fmt: skip


def sim_address(index: int) -> Address:
    """The address of the ``index``-th simulated host: 10.0.0.1, 10.0.0.2, … port 4000."""
    ip = (10 << 24) + index + 1
    return (f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}", 4000)


def _dotted(ip: int) -> str:
    return f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"


def private_address(index: int) -> Address:
    """The address of the ``index``-th host when it sits behind a NAT: 100.64.0.1, … port
    4000 (shared address space, unique across NATs so the network can tell hosts apart)."""
    return (_dotted((100 << 24) + (64 << 16) + index + 1), 4000)


def nat_ip(number: int) -> str:
    """The external IP of the ``number``-th NAT box: 172.16.0.1, 172.16.0.2, …"""
    return _dotted((172 << 24) + (16 << 16) + number + 1)


# --- measurements -----------------------------------------------------------------------------


@dataclass(slots=True)
class OpRecord:
    """The measurements of one finished operation."""

    kind: str
    """``join``, ``lookup``, ``put``, ``get`` or ``ping``."""
    phase: str
    """The scenario phase the operation started in."""
    node: int
    """Index of the node that ran it."""
    start: float
    end: float
    hops: int
    """Rounds of the iterative search needed to reach the final k (0 for joins)."""
    messages: int
    """Requests the node sent for it."""
    success: bool
    """Lookups: the result includes at least one of the true k closest live nodes (it reached
    the target's replica set: a value stored there would be found). Gets: the value was
    found (and is the one expected). Puts: at least ``store_quorum`` stores acknowledged.
    Joins: the bootstrap finished. Pings: answered."""
    exact: bool | None
    """Lookups: whether the result is exactly the true k closest live ids, in order; else
    None."""
    recall: float | None = None
    """Lookups: the share of the true k closest live ids the result holds; else None."""
    detail: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


class Operation:
    """A command in progress on one node; :attr:`record` is set when it ends."""

    __slots__ = (
        "aborted",
        "attempt",
        "detail",
        "expect",
        "kind",
        "node",
        "on_done",
        "phase",
        "qid",
        "record",
        "result",
        "sent_before",
        "start",
        "target",
    )

    def __init__(
        self,
        kind: str,
        node: SimNode,
        target: NodeId | None,
        start: float,
        phase: str,
        on_done: Callable[[Operation], object] | None,
    ) -> None:
        self.kind = kind
        self.node = node
        self.target = target
        self.start = start
        self.phase = phase
        self.on_done = on_done
        self.qid = 0
        self.aborted = False
        """Its node went down before it finished: it never will."""
        self.attempt = 1
        self.detail = ""
        """A note for the record (e.g. which join attempt this is)."""
        self.expect: bytes | None = None
        self.sent_before = 0
        self.result: Event | None = None
        """The engine's final event (None while running or if the node died first)."""
        self.record: OpRecord | None = None

    @property
    def done(self) -> bool:
        return self.record is not None

    @property
    def succeeded(self) -> bool:
        return self.record is not None and self.record.success

    def __repr__(self) -> str:
        if self.record is not None:
            state = f"success={self.record.success}"
        else:
            state = "aborted" if self.aborted else "running"
        return f"<Operation {self.kind} on node {self.node.index} {state}>"


# --- ground truth ---------------------------------------------------------------------------


class LiveIds:
    """The ids of every live node, sorted, answering "which k are closest to x?" exactly.

    The ids sharing a prefix with the target form one contiguous run of the sorted list, and
    every id outside the run is farther than every id inside it; so narrowing the run bit by
    bit while it still holds enough ids, then sorting only that run, gives the true k closest
    in O(log n) bisections instead of a full sort.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: int) -> bool:
        i = bisect.bisect_left(self._ids, node_id)
        return i < len(self._ids) and self._ids[i] == node_id

    def add(self, node_id: int) -> None:
        i = bisect.bisect_left(self._ids, node_id)
        if i == len(self._ids) or self._ids[i] != node_id:
            self._ids.insert(i, node_id)

    def discard(self, node_id: int) -> None:
        i = bisect.bisect_left(self._ids, node_id)
        if i < len(self._ids) and self._ids[i] == node_id:
            del self._ids[i]

    def closest(self, target: int, count: int, exclude: int | None = None) -> list[int]:
        """The ``count`` live ids nearest ``target`` by XOR, nearest first."""
        ids = self._ids
        need = count + (1 if exclude is not None else 0)
        lo, hi = 0, len(ids)
        left = bisect.bisect_left
        for bit in range(ID_BITS - 1, -1, -1):
            if hi - lo <= need:
                break
            # the half of the current run that agrees with the target on this bit
            base = (target >> bit) << bit
            a = left(ids, base, lo, hi)
            b = left(ids, base + (1 << bit), a, hi)
            if b - a < need:
                break
            lo, hi = a, b
        run = [i for i in ids[lo:hi] if i != exclude]
        run.sort(key=lambda i: i ^ target)
        return run[:count]


# --- nodes --------------------------------------------------------------------------------


class SimNode:
    """One engine on the simulated network."""

    __slots__ = (
        "address",
        "endpoint",
        "engine",
        "index",
        "joined",
        "leave_qid",
        "leaving",
        "node_id",
        "ops",
        "scheduler",
        "sim",
        "timer_at",
        "timer_gen",
        "up",
    )

    def __init__(
        self,
        sim: Simulation,
        index: int,
        engine: KadEngine,
        address: Address,
        nat: NatBox | None = None,
    ) -> None:
        self.sim = sim
        self.scheduler = sim.scheduler
        self.index = index
        self.engine = engine
        self.node_id: NodeId = engine.node_id
        self.address = address
        self.up = True
        self.joined = False
        self.leaving = False
        self.ops: dict[int, Operation] = {}
        self.timer_at = _INF
        self.timer_gen = 0
        self.leave_qid: int | None = None
        """The engine's leave, once a clean departure started it."""
        self.endpoint: Endpoint = sim.network.attach(address, self.receive, nat)

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<SimNode {self.index} {self.node_id.short()} {state}>"

    def receive(self, data: bytes, source: Address) -> None:
        """The network delivers a datagram."""
        self.engine.receive_datagram(data, source, self.scheduler.now)
        self.flush()

    def wake(self, generation: int) -> None:
        """The engine's timer is due (or was: the answer it waited for may have come)."""
        if generation != self.timer_gen or not self.up:
            return
        self.timer_at = _INF
        now = self.scheduler.now
        if self.engine.get_timer() > now:
            # Nothing is due any more (handle_timer would do nothing): just re-arm.
            self._arm(now)
            return
        self.engine.handle_timer(now)
        self.flush()

    def _arm(self, now: float) -> None:
        deadline = self.engine.get_timer()
        if deadline < self.timer_at and self.up:
            self.timer_at = deadline
            self.timer_gen += 1
            self.scheduler.post(deadline if deadline > now else now, self.wake, self.timer_gen)

    def flush(self) -> None:
        """Send what the engine queued, hand its events to the simulation, arm its timer."""
        engine = self.engine
        sim = self.sim
        out = engine.datagrams_to_send()
        if out:
            send = sim.network.send
            endpoint = self.endpoint
            for data, destination in out:
                send(endpoint, data, destination)
        event = engine.next_event()  # (the fingerprint's recorder sees events through it)
        while event is not None:
            if type(event) is LeaveDone and event.query_id == self.leave_qid:
                sim.scheduler.call_later(0.0, sim.crash, self)  # handed off: now go
            elif type(event) in _FINAL_EVENTS:
                op = self.ops.pop(event.query_id, None)  # type: ignore[union-attr]
                if op is not None:
                    sim._finish(op, event)
            elif sim.event_listener is not None:
                sim.event_listener(self, event)
            event = engine.next_event()
        # _arm(now), inlined: this runs after every datagram.
        deadline = engine.get_timer()
        if deadline < self.timer_at and self.up:
            scheduler = self.scheduler
            now = scheduler.now
            self.timer_at = deadline
            self.timer_gen += 1
            scheduler.post(deadline if deadline > now else now, self.wake, self.timer_gen)


_FINAL_EVENTS = frozenset({BootstrapDone, LookupDone, GetDone, PutDone, PingDone, QueryFailed})


class NodeSet:
    """A set of nodes with O(1) add, remove and uniform random choice; iteration order
    depends only on the order of additions and removals (never on hashing)."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[SimNode] = []
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node: object) -> bool:
        return isinstance(node, SimNode) and node.index in self._pos

    def __iter__(self) -> Iterator[SimNode]:
        return iter(list(self._items))

    def add(self, node: SimNode) -> None:
        if node.index not in self._pos:
            self._pos[node.index] = len(self._items)
            self._items.append(node)

    def discard(self, node: SimNode) -> None:
        pos = self._pos.pop(node.index, None)
        if pos is None:
            return
        last = self._items.pop()
        if last is not node:
            self._items[pos] = last
            self._pos[last.index] = pos

    def choice(self, rng: random.Random) -> SimNode:
        return self._items[rng.randrange(len(self._items))]

    def sample(self, rng: random.Random, count: int) -> list[SimNode]:
        return rng.sample(self._items, min(count, len(self._items)))


# --- the simulation --------------------------------------------------------------------------


def default_sim_config() -> KadConfig:
    """The engine configuration simulations use unless told otherwise: the product's
    defaults, except ``join_refresh=False``.

    The paper's join (own-id lookup, then a lookup in every farther bucket) costs about five
    times the messages of the own-id lookup alone, which would make a 10 000-node join take
    minutes. Pass ``KadConfig()`` (CLI: ``--join-refresh``) to simulate the daemon's default
    join exactly.
    """
    return KadConfig(join_refresh=False)


class Simulation:
    """Many engines, one virtual clock, one seeded network.

    Everything random derives from ``seed``: identities, engine randomness, latency, loss and
    any workload drawn from :attr:`rng`. The same seed and the same sequence of calls give the
    same run, whatever ``PYTHONHASHSEED`` is.

    ``real_crypto=False`` (the default) swaps the engine's Ed25519 authenticator for
    :class:`~.auth.SimAuthenticator`, a cheap keyed hash that is **not** a security mechanism;
    ``real_crypto=True`` runs true Ed25519 signatures on every datagram.
    """

    def __init__(
        self,
        seed: int = 1,
        *,
        config: KadConfig | None = None,
        latency: LatencyModel | None = None,
        loss: float = 0.0,
        jitter: float = 0.1,
        real_crypto: bool = False,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.config = config if config is not None else default_sim_config()
        master = random.Random(seed)
        self.scheduler = Scheduler(START_TIME)
        self.network = Network(
            self.scheduler,
            random.Random(master.getrandbits(64)),
            seed=master.getrandbits(64),
            latency=latency,
            loss=loss,
            jitter=jitter,
        )
        if trace:
            self.network.enable_trace()
        self.rng = random.Random(master.getrandbits(64))
        """Randomness for workloads (which node, which key): use it to stay reproducible."""
        self._identity_rng = random.Random(master.getrandbits(64))
        self._engine_rng = random.Random(master.getrandbits(64))
        self.keyring = SimKeyring(master.randbytes(32))
        self._nat_rng = random.Random(master.getrandbits(64))
        """Seeds of NAT boxes (drawn last from ``master``: runs without NATs are unchanged)."""
        self.nats: list[NatBox] = []
        self.real_crypto = real_crypto
        self.phase = "main"
        """Label stamped on operations started from now on (a scenario's current phase)."""

        self.nodes: dict[int, SimNode] = {}
        """Nodes that are up, by index."""
        self.joined = NodeSet()
        """Live nodes whose join has finished (and that are not leaving)."""
        self.live = LiveIds()
        """Ids of every node that is up: the ground truth for lookups."""
        self.records: list[OpRecord] = []
        """Measurements of every finished operation, in the order they finished."""
        self.aborted = 0
        """Operations lost because their node went down before they finished."""
        self.departures = 0
        self._next_index = 0
        self._digest = hashlib.sha256()
        self._done_listeners: list[Callable[[OpRecord], object]] = []
        self._waiting: dict[int, Operation] = {}
        self._abort_listeners: list[Callable[[Operation], object]] = []
        self.event_listener: Callable[[SimNode, Event], object] | None = None
        """Called with every other event a node reports (channels, peers added or removed):
        what a scenario follows beyond the operations above (sim/connectscenario.py)."""

    # --- time ------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.scheduler.now

    def run(self, until: float | None = None) -> None:
        """Run until virtual time ``until`` (or until nothing is left to do)."""
        self.scheduler.run(until)

    def run_for(self, seconds: float) -> None:
        self.scheduler.run(self.scheduler.now + seconds)

    def wait(self, ops: Iterable[Operation], timeout: float = 3600.0) -> bool:
        """Run until every operation in ``ops`` has ended: finished, or abandoned because
        its node went down (:attr:`Operation.aborted`). Returns False if some are still
        running after ``timeout`` virtual seconds. The clock stops right at the last end."""
        waiting = {id(op): op for op in ops if op.record is None and not op.aborted}
        if not waiting:
            return True
        self._waiting = waiting
        try:
            self.scheduler.run(self.scheduler.now + timeout)
        finally:
            self._waiting = {}
        return all(op.record is not None or op.aborted for op in waiting.values())

    def _ended(self, op: Operation) -> None:
        waiting = self._waiting
        if waiting and waiting.pop(id(op), None) is not None and not waiting:
            self.scheduler.stop()

    # --- membership --------------------------------------------------------------------

    def add_nat(self, nat_type: NatType) -> NatBox:
        """A new NAT box with an external IP of its own (put hosts behind it with
        ``add_node(nat=box)``)."""
        box = NatBox(nat_ip(len(self.nats)), nat_type, self._nat_rng.getrandbits(64))
        self.network.add_nat(box)
        self.nats.append(box)
        return box

    def renumber_nat(self, box: NatBox) -> str:
        """Give ``box`` a fresh external IP mid-run (its mappings are lost); the new IP."""
        # 172.17.x.x onwards: clear of the IPs add_nat hands out (172.16.x.x).
        ip = nat_ip((1 << 16) + sum(b.stats["renumbered"] for b in self.nats))
        self.network.renumber_nat(box, ip)
        return ip

    def add_node(
        self,
        *,
        client_mode: bool = False,
        identity: Identity | None = None,
        nat: NatType | NatBox | None = None,
        mode: str | None = None,
    ) -> SimNode:
        """Bring a new host up (not joined yet: call :meth:`join`). ``identity`` defaults to
        a fresh one from the seed. ``nat``: put the host behind that box, or behind a new
        box of its own of that type; it then has a private address (:func:`private_address`)
        and the world sees it at the box's. ``mode``: the node's ``KadConfig.mode``
        (default: the simulation's)."""
        index = self._next_index
        self._next_index += 1
        if identity is None:
            identity = Identity.generate(self._identity_rng)
        config = self.config if mode is None else self.config.with_changes(mode=mode)
        engine = KadEngine(
            identity,
            config=config,
            rng=self._engine_rng,
            now=self.scheduler.now,
            client_mode=client_mode,
        )
        if not self.real_crypto:
            engine.auth = SimAuthenticator(identity, self.keyring)
            engine.table.interner = self.keyring.contacts.intern  # one Contact per peer
        box = self.add_nat(nat) if isinstance(nat, NatType) else nat
        address = sim_address(index) if box is None else private_address(index)
        engine.address = address
        node = SimNode(self, index, engine, address, box)
        self.nodes[index] = node
        self.live.add(node.node_id)
        node.flush()
        return node

    def grow(
        self, count: int, *, seeds_per_join: int = 3, interval: float = 0.01
    ) -> list[Operation]:
        """Add ``count`` nodes, one every ``interval`` virtual seconds, each joining through
        up to ``seeds_per_join`` random nodes that already joined (the very first node of an
        empty network joins alone); run until every join has finished and return the joins.
        """
        ops: list[Operation] = []

        def arrive() -> None:
            seeds = [n.address for n in self.joined.sample(self.rng, seeds_per_join)]
            ops.append(self.join(self.add_node(), seeds))

        for i in range(count):
            self.scheduler.call_later(i * interval, arrive)
        self.run_for(count * interval)
        self.wait(ops)
        return ops

    def crash(self, node: SimNode) -> None:
        """The node vanishes abruptly: no goodbye, datagrams to it (even in flight) are lost,
        and its unfinished operations are abandoned (counted in :attr:`aborted`)."""
        if not node.up:
            return
        node.up = False
        node.joined = False
        self.network.detach(node.address)
        self.nodes.pop(node.index, None)
        self.joined.discard(node)
        self.live.discard(node.node_id)
        self.departures += 1
        if node.ops:
            ops = list(node.ops.values())
            node.ops.clear()
            self.aborted += len(ops)
            for op in ops:
                op.aborted = True
                self._ended(op)
                for listener in self._abort_listeners:
                    listener(op)

    def leave(self, node: SimNode, grace: float = 10.0) -> None:
        """A clean departure, as a daemon's stop does it: the node takes no new work, lets
        its running operations finish (for at most ``grace`` seconds), then runs the
        engine's leave (it hands each record it holds to the nodes that keep it once it is
        gone) and goes down when that is done, or after ``leave_timeout``."""
        if not node.up or node.leaving:
            return
        node.leaving = True
        self.joined.discard(node)
        if not node.ops:
            self._hand_off(node)
            return
        self.scheduler.call_later(grace, self._hand_off, node)

    def _hand_off(self, node: SimNode) -> None:
        if not node.up or node.leave_qid is not None:
            return
        node.leave_qid = node.engine.leave(self.scheduler.now)
        self.scheduler.call_later(self.config.leave_timeout, self.crash, node)
        node.flush()

    # --- commands -----------------------------------------------------------------------

    def _begin(
        self,
        kind: str,
        node: SimNode,
        target: NodeId | None,
        on_done: Callable[[Operation], object] | None,
    ) -> Operation:
        if not node.up:
            raise ValueError(f"{node!r} is down")
        return Operation(kind, node, target, self.scheduler.now, self.phase, on_done)

    def _submit(self, op: Operation, qid: int) -> Operation:
        op.qid = qid
        op.node.ops[qid] = op
        op.node.flush()
        return op

    def join(
        self,
        node: SimNode,
        seeds: Sequence[Address],
        on_done: Callable[[Operation], object] | None = None,
    ) -> Operation:
        """Bootstrap ``node`` through ``seeds`` (addresses), as a real node joins. With no
        seeds the node is the network's first and counts as joined at once."""
        op = self._begin("join", node, None, on_done)
        op.sent_before = _requests_sent(node.engine)
        if not seeds:
            op.qid = -1
            self._finish(op, BootstrapDone(-1, 0))
            return op
        return self._submit(op, node.engine.bootstrap(seeds, self.scheduler.now))

    def ping(
        self,
        node: SimNode,
        address: Address,
        on_done: Callable[[Operation], object] | None = None,
    ) -> Operation:
        """PING ``address`` from ``node`` (latency = the round trip)."""
        op = self._begin("ping", node, None, on_done)
        return self._submit(op, node.engine.ping(address, self.scheduler.now))

    def lookup(
        self,
        node: SimNode,
        target: NodeId,
        on_done: Callable[[Operation], object] | None = None,
        *,
        paths: int | None = None,
    ) -> Operation:
        """Iterative FIND_NODE for ``target`` from ``node`` (on ``paths`` disjoint paths;
        default: the engine's configuration)."""
        op = self._begin("lookup", node, target, on_done)
        return self._submit(op, node.engine.find_node(target, self.scheduler.now, paths=paths))

    def put(
        self,
        node: SimNode,
        key: NodeId,
        value: bytes,
        ttl: int = 86_400,
        on_done: Callable[[Operation], object] | None = None,
    ) -> Operation:
        """Store an open record from ``node``."""
        op = self._begin("put", node, key, on_done)
        op.expect = value
        record = Record(key, value, int(self.scheduler.now * 1000), ttl)
        return self._submit(op, node.engine.put(record, self.scheduler.now))

    def store_at(
        self,
        node: SimNode,
        record: Record,
        contacts: Sequence[Contact],
        on_done: Callable[[Operation], object] | None = None,
    ) -> Operation:
        """STORE ``record`` from ``node`` on ``contacts`` without a lookup (the pieces of a
        large value, :mod:`.blobs`)."""
        op = self._begin("store", node, record.key, on_done)
        return self._submit(op, node.engine.store_at(record, contacts, self.scheduler.now))

    def get(
        self,
        node: SimNode,
        key: NodeId,
        expect: bytes | None = None,
        on_done: Callable[[Operation], object] | None = None,
        *,
        paths: int | None = None,
    ) -> Operation:
        """Iterative FIND_VALUE from ``node``; succeeds when a record is found (and, when
        ``expect`` is given, holds exactly that value)."""
        op = self._begin("get", node, key, on_done)
        op.expect = expect
        return self._submit(op, node.engine.get(key, self.scheduler.now, paths=paths))

    # --- results ----------------------------------------------------------------------

    def on_record(self, listener: Callable[[OpRecord], object]) -> None:
        """Call ``listener`` with every operation's record as it finishes."""
        self._done_listeners.append(listener)

    def on_abort(self, listener: Callable[[Operation], object]) -> None:
        """Call ``listener`` with every operation abandoned because its node went down."""
        self._abort_listeners.append(listener)

    def _finish(self, op: Operation, event: Event) -> None:
        node = op.node
        now = self.scheduler.now
        k = self.config.k
        hops = messages = 0
        exact: bool | None = None
        recall: float | None = None
        detail = ""
        truth_hash = b""
        match event:
            case LookupDone(contacts=contacts, hops=hops, queries=messages):
                assert op.target is not None
                truth = self.live.closest(op.target, k, exclude=node.node_id)
                got = [c.node_id for c in contacts]
                exact = got == truth
                found = len(set(got).intersection(truth))
                recall = found / len(truth) if truth else 1.0
                success = found > 0 or not truth
                truth_hash = b"".join(c.to_bytes32() for c in got)
            case GetDone(record=value, hops=hops, queries=messages):
                success = value is not None and (op.expect is None or value.value == op.expect)
                if value is None:
                    detail = "not found"
                elif not success:
                    detail = "wrong value"
            case PutDone(acks=acks, queries=messages):
                success = acks >= self.config.store_quorum
                detail = f"{acks} acks"
            case PingDone():
                success = True
                messages = 1
            case BootstrapDone(table_size=size):
                success = True
                messages = _requests_sent(node.engine) - op.sent_before
                detail = f"table {size}"
                if node.up and not node.leaving:
                    node.joined = True
                    self.joined.add(node)
            case QueryFailed(reason=reason):
                success = False
                detail = reason
                if op.kind == "join":
                    messages = _requests_sent(node.engine) - op.sent_before
            case _:  # pragma: no cover - _FINAL_EVENTS lists exactly the cases above
                raise AssertionError(f"unexpected final event {event!r}")
        if op.detail:
            detail = f"{op.detail}: {detail}" if detail else op.detail
        record = OpRecord(
            op.kind, op.phase, node.index, op.start, now, hops, messages, success, exact, recall,
            detail,
        )  # fmt: skip
        op.result = event
        op.record = record
        self.records.append(record)
        self._ended(op)
        self._digest.update(
            f"{record.kind}|{record.phase}|{record.node}|{record.start!r}|{record.end!r}|"
            f"{hops}|{messages}|{success}|{exact}|{recall!r}|{detail}|".encode()
        )
        self._digest.update(truth_hash)
        for listener in self._done_listeners:
            listener(record)
        if op.on_done is not None:
            op.on_done(op)
        if node.leaving and not node.ops and node.up:
            self.crash(node)

    def digest(self) -> str:
        """A SHA-256 over every finished operation's measurements and the network's
        counters (and, with ``trace=True``, every datagram): equal digests mean equal runs."""
        summary = self._digest.copy()
        stats = self.network.stats
        summary.update(
            f"{self.scheduler.now!r}|{self.scheduler.events_run}|{stats.sent}|{stats.delivered}|"
            f"{stats.lost}|{stats.to_down}|{stats.partitioned}|{stats.bytes_sent}".encode()
        )
        trace = self.network.trace_digest()
        if trace is not None:
            summary.update(trace.encode())
        return summary.hexdigest()


def _requests_sent(engine: KadEngine) -> int:
    stats = engine.stats
    return sum(stats[key] for key in _REQUEST_KEYS)
