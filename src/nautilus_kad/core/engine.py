"""KadEngine: the whole Kademlia protocol as a sans-I/O state machine.

The engine never touches a socket, a clock or global randomness (the h11 / aioquic pattern):

* inputs: :meth:`KadEngine.receive_datagram`, :meth:`KadEngine.handle_timer` and the commands
  (:meth:`~KadEngine.bootstrap`, :meth:`~KadEngine.find_node`, :meth:`~KadEngine.get`,
  :meth:`~KadEngine.put`, :meth:`~KadEngine.ping`, :meth:`~KadEngine.leave`), each taking the
  current time ``now``; the commands return a query id;
* outputs: :meth:`KadEngine.datagrams_to_send`, :meth:`KadEngine.get_timer` (the next deadline)
  and :meth:`KadEngine.next_event`.

The asyncio node and the simulator both drive this one class, so the simulator measures the
code the daemon runs.

Durability (DESIGN §7) also lives here: every holder republishes each record to the current k
closest once per ``republish_interval`` (skipped when the record arrived within it), the
publisher re-puts its own records every ``publisher_republish_interval``, a newcomer among the
k closest is handed the records it should hold, the death of a holder triggers a prompt
re-replication, and :meth:`KadEngine.leave` hands everything on before a clean stop. All
replication STOREs go through one flow-controlled queue (``replication_window`` in flight).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import logging
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter

from .addresses import is_public, is_usable
from .auth import Authenticator
from .config import MAX_DATAGRAM, KadConfig
from .context import FLAG_CLIENT, FLAG_LEAVING, NodeContext
from .errors import (
    ValidationError,
)
from .events import (
    BootstrapDone,
    Event,
    GetDone,
    LeaveDone,
    LookupDone,
    NodesAnswered,
    PeerAdded,
    PeerRemoved,
    PingDone,
    PutDone,
    QueryFailed,
)
from .holdings import Holdings
from .identity import Identity
from .ids import ID_BITS, NodeId, random_id_in_bucket
from .limits import MAX_PING_BYTES
from .lookup import AnyLookup, Candidate, new_lookup
from .messages import (
    Address,
    Contact,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    Request,
    Store,
    Stored,
    Value,
)
from .pending import Pending
from .records import (
    Record,
    RecordKind,
    check_replace,
    for_transfer,
    record_expiry,
    validate_record,
)
from .replication import DueState, RepublishSchedule
from .routing import RoutingTable
from .session import (
    SessionTable,
)
from .storage import MemoryStore, RecordStore
from .tokens import TOKEN_BYTES, TOKEN_REUSE, WriteTokens
from .wire import Wire

__all__ = ["FLAG_CLIENT", "FLAG_LEAVING", "TOKEN_BYTES", "TOKEN_REUSE", "KadEngine"]

_log = logging.getLogger("nautilus_kad.engine")

_RECENT_SIGNED = 256
_STRIKES = 4096
_HOST = attrgetter("host")
_HARD, _SOFT, _GRACE = 0, 1, 2
"""Kinds of request timer: the hard deadline, the soft timeout, a lookup's slow grace."""
_REPLICATION_QID = 0
"""Query id of the replication sink: user query ids start at 1."""
TOP_UP_MAX = 3
"""Nodes one repair top-up STOREs on at most."""
DROP_SHARE = 0.75
"""A holder outside the k closest lets its copy go once this share of the k closest
acknowledged the republish (under churn, one of k is often just dying)."""

# Stats keys per message type, built once (an f-string with ``TYPE.name`` per datagram costs).
_RX_REQUEST_KEY = {t: f"rx.request.{t.name}" for t in MessageType}
_RX_RESPONSE_KEY = {t: f"rx.response.{t.name}" for t in MessageType}
_TX_REQUEST_KEY = {t: f"tx.request.{t.name}" for t in MessageType}
_REQUEST_CLASSES = frozenset({Ping, FindNode, FindValue, Store})
"""The request message classes (``message.TYPE.is_request``, without an enum property)."""


# --- bookkeeping for what we are waiting on ---------------------------------------------


@dataclass(slots=True)
class _PingQuery:
    query_id: int
    internal: bool = False


@dataclass(slots=True)
class _LookupQuery:
    query_id: int
    lookup: AnyLookup
    want_value: bool
    internal: bool = False
    found: Record | None = None
    holders: set[NodeId] = field(default_factory=set)
    """Peers that answered with the value (no point caching it back at them)."""
    put_record: Record | None = None
    put_cas: int | None = None
    bootstrap: _BootstrapQuery | None = None
    overloaded: bool = False
    """A request was refused by ``max_pending_requests``: the result may be incomplete."""
    kind: RecordKind | None = None
    """The record kind a get accepts (None: any valid record)."""
    quorum: int = 1
    """Valid answers a get collects before it stops (more than 1 for signed records)."""
    answers: list[tuple[Contact, Record, bytes]] = field(default_factory=list)
    """Valid (peer, record, token) answers of a quorum get."""
    local: Record | None = None
    """A signed get's own stored copy: one more answer, and corrected if it lags."""
    republish: bool = False
    """A holder's republish: STORE on the k closest found through the replication queue."""
    leave: _ReplBatch | None = None
    """A leaving node's lookup for one of its keys: a FIND_VALUE that does not stop at the
    value but notes who has it, then STOREs on those of the k closest who do not."""


@dataclass(slots=True)
class _PutQuery:
    query_id: int
    record: Record
    queries: int
    waiting: set[bytes] = field(default_factory=set)
    acks: list[Contact] = field(default_factory=list)
    errors: list[tuple[ErrorCode, str]] = field(default_factory=list)
    internal: bool = False
    """The publisher's own republish: no event; a STALE answer ends the republishing."""


_SUPERSEDED = frozenset({ErrorCode.STALE_RECORD, ErrorCode.STALE_SEQUENCE})
"""Refusals that mean a newer version is stored: the publisher stops republishing its own."""


@dataclass(slots=True)
class _TokenQuery:
    """A FIND_NODE sent only to get a peer's write token (for a handoff or a leave)."""

    query_id: int
    node_id: NodeId


@dataclass(slots=True)
class _ReplicationSink:
    """Receives the answers to every replication STORE (one shared query)."""

    query_id: int = _REPLICATION_QID


@dataclass(slots=True, eq=False)
class _ReplBatch:
    """Replication STOREs started for one reason; something happens when all are answered."""

    kind: str
    """``republish``, ``handoff``, ``repair`` or ``leave``."""
    key: NodeId | None = None
    record: Record | None = None
    """The version a republish started from (only that version may be dropped afterwards)."""
    drop_after_acks: int = 0
    """A holder outside the k closest drops its copy once this many of them stored it."""
    own_copy: bool = False
    """A republish by one of the k closest: its own copy counts as one of the k."""
    query_id: int | None = None
    records: int = 0
    outstanding: int = 0
    sent: int = 0
    acks: int = 0


@dataclass(slots=True, eq=False)
class _ReplItem:
    contact: Contact
    key: NodeId
    batch: _ReplBatch


@dataclass(slots=True, eq=False)
class _Scan:
    """Records to examine because ``peer`` joined (handoff) or died (repair), resumed in
    chunks of ``scan_batch`` from XOR distance ``next_distance`` (from our id)."""

    peer: Contact
    joined: bool
    next_distance: int


@dataclass(slots=True, eq=False)
class _Published:
    """A record this node's user put: re-put every ``publisher_republish_interval``."""

    record: Record
    base_ttl: int
    due: float


@dataclass(slots=True)
class _BootstrapQuery:
    query_id: int
    seeds_waiting: int
    lookups_waiting: int = 0
    phase: str = "seeds"
    """seeds (pinging known addresses) → self (own-id lookup) → refresh (farther buckets)."""


class _Ranker:
    """Ranks one peer against many keys without sorting the table for each key.

    In XOR space, whether node ``x`` is closer to key ``K`` than node ``a`` depends only on
    the highest bit ``p`` where ``x`` and ``a`` differ: ``x`` is closer iff ``K`` differs
    from ``a`` at bit ``p`` too. So the table is grouped once by that bit (relative to the
    peer, and relative to us), and a key's count is a sum over the bits set in ``K ^ a``.
    """

    __slots__ = ("_by_own", "_by_peer", "_own", "_peer")

    def __init__(
        self,
        own: NodeId,
        peer: NodeId,
        by_peer: list[tuple[int, int]],
        by_own: list[tuple[int, list[float]]],
    ) -> None:
        self._own = own
        self._peer = peer
        self._by_peer = by_peer
        self._by_own = by_own

    def closer_than_peer(self, key: NodeId) -> int:
        """Known nodes (us included, stale ones too) closer to ``key`` than the peer."""
        diff = key ^ self._peer
        return sum(count for bit, count in self._by_peer if diff >> bit & 1)

    def closer_than_us(self, key: NodeId, known_before: float, enough: int) -> int:
        """Live peers (not the peer) closer to ``key`` than us that entered the table
        before ``known_before`` (all of them for ``inf``); counting stops at ``enough``."""
        diff = key ^ self._own
        total = 0
        for bit, joined in self._by_own:
            if diff >> bit & 1:
                if known_before == math.inf:
                    total += len(joined)
                else:
                    total += bisect.bisect_left(joined, known_before)
                if total >= enough:
                    break
        return total


_Query = _PingQuery | _LookupQuery | _PutQuery | _BootstrapQuery | _TokenQuery | _ReplicationSink


class KadEngine:
    """One Kademlia node's protocol state."""

    def __init__(
        self,
        identity: Identity,
        *,
        config: KadConfig | None = None,
        rng: random.Random,
        now: float,
        store: RecordStore | None = None,
        client_mode: bool = False,
    ) -> None:
        config = config or KadConfig()
        self.identity = identity
        self.node_id: NodeId = identity.node_id
        self.table = RoutingTable(self.node_id, config, now)
        self._ctx = ctx = NodeContext(
            identity,
            config,
            rng,
            Authenticator(identity, config.verify_cache_size),
            SessionTable(config),
            self.table,
            store if store is not None else MemoryStore(),
            FLAG_CLIENT if client_mode else 0,
        )
        self.stats: Counter[str] = ctx.stats
        self.rng = rng
        self._events: deque[Event] = ctx.events
        self._pending: dict[bytes, Pending] = {}
        # Looked up at each call, not bound now: the simulator's hostile nodes override
        # _closest_for on a subclass the engine's class is switched to at run time.
        closest_for = lambda t, r: self._closest_for(t, r)  # noqa: E731, PLW0108
        self.wire = Wire(ctx, self._pending.get, closest_for)
        self.replays = self.wire.replays
        self.ingress = self.wire.ingress
        self.budget = self.wire.budget
        self._timers: list[tuple[float, int, bytes, int]] = []
        self._timer_seq = 0
        self._queries: dict[int, _Query] = {}
        self._next_query_id = 1
        self._verifying: set[NodeId] = set()
        self._awaiting: dict[NodeId, int] = {}
        """Requests in flight per peer: a peer we await an answer from needs no PING of
        its own when it writes to us (its answer is the proof)."""
        self._recent_signed: OrderedDict[NodeId, Record] = OrderedDict()
        """Newest signed records of recent gets: late answers older than these get fixed."""
        self.strikes: OrderedDict[NodeId, int] = OrderedDict()
        """Invalid values (bad signature, wrong key hash …) each peer served us, for the
        most recent offenders."""

        self.tokens = WriteTokens(ctx, now)
        self._next_refresh_check = now + self.config.refresh_check_interval
        self._next_expiry = now + self.config.expire_interval

        # --- durability ----------------------------------------------------------------
        self._schedule = RepublishSchedule()
        self.holdings = Holdings(
            ctx, lambda key, now: self._arm(key, now, now), self._schedule.forget
        )
        self._held = self.holdings.held
        self._published: dict[NodeId, _Published] = {}
        self._publish_heap: list[tuple[float, int, NodeId]] = []
        self._token_waiters: dict[NodeId, list[_ReplItem]] = {}
        self._repl_queue: deque[_ReplItem] = deque()
        self._repl_inflight: dict[bytes, _ReplItem] = {}
        self._republish_ready: deque[NodeId] = deque()
        self._republishing = 0
        self._scans: deque[_Scan] = deque()
        self._scan_wakeup = math.inf
        self._peer_since: dict[NodeId, float] = {}
        """When each routing-table peer entered the table (handoff ranks holders by it)."""
        self._leaving: _ReplBatch | None = None
        self._starting_republishes = False
        check = self.config.neighbour_check_interval
        self._next_neighbour_check = now + check * (0.5 + rng.random()) if check else math.inf
        self._queries[_REPLICATION_QID] = _ReplicationSink()
        self.holdings.load(now, lambda key, stored_at: self._loaded(key, stored_at, now))

    # --- shared state that drivers and tests may replace ---------------------------------

    @property
    def config(self) -> KadConfig:
        return self._ctx.config

    @config.setter
    def config(self, value: KadConfig) -> None:
        self._ctx.config = value

    @property
    def auth(self) -> Authenticator:
        """Signs and verifies datagrams (the simulator swaps in a cheap stand-in)."""
        return self._ctx.auth

    @auth.setter
    def auth(self, value: Authenticator) -> None:
        self._ctx.auth = value

    @property
    def sessions(self) -> SessionTable:
        return self._ctx.sessions

    @sessions.setter
    def sessions(self, value: SessionTable) -> None:
        self._ctx.sessions = value

    @property
    def store(self) -> RecordStore:
        return self._ctx.store

    @store.setter
    def store(self, value: RecordStore) -> None:
        self._ctx.store = value

    @property
    def flags(self) -> int:
        """Sender flags of every datagram we send (FLAG_CLIENT, FLAG_LEAVING)."""
        return self._ctx.flags

    @flags.setter
    def flags(self, value: int) -> None:
        self._ctx.flags = value

    @property
    def address(self) -> Address | None:
        """Our bound address, set by the driver once known."""
        return self._ctx.address

    @address.setter
    def address(self, value: Address | None) -> None:
        self._ctx.address = value

    @property
    def observed_address(self) -> Address | None:
        """Our address as the last peer to answer us saw it."""
        return self._ctx.observed_address

    @observed_address.setter
    def observed_address(self, value: Address | None) -> None:
        self._ctx.observed_address = value

    # ======================================================================================
    # Outputs
    # ======================================================================================

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued for the network since the last call."""
        return self.wire.drain()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        """The next time :meth:`handle_timer` must run."""
        deadline = min(
            self.tokens.next_rotation,
            self._next_refresh_check,
            self._next_expiry,
            self._schedule.next_deadline(),
            self._scan_wakeup,
            self._next_neighbour_check,
        )
        timers = self._timers
        pending = self._pending
        # Timers of requests already answered would only wake the driver for nothing
        # (handle_timer skips them): drop them from the top of the heap first.
        while timers and timers[0][2] not in pending:
            heapq.heappop(timers)
        if timers:
            deadline = min(deadline, timers[0][0])
        if self._publish_heap:
            deadline = min(deadline, self._publish_heap[0][0])
        return deadline

    @property
    def replication_backlog(self) -> int:
        """Replication STOREs queued or in flight, plus records still to be examined."""
        waiting = sum(len(items) for items in self._token_waiters.values())
        return len(self._repl_queue) + len(self._repl_inflight) + waiting + len(self._scans)

    @property
    def stored_bytes(self) -> int:
        """What the records we hold count against ``max_store_bytes``."""
        return self.holdings.stored_bytes

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def metrics(self, now: float | None = None) -> dict[str, float]:
        """Every counter of :attr:`stats`, plus gauges of the abuse defences and the limits
        they enforce (``limit.*``), so an operator sees both what happened and why."""
        cfg = self.config
        out: dict[str, float] = dict(self.stats)
        out["ratelimit.sources"] = len(self.ingress)
        out["ratelimit.blocks"] = self.ingress.blocks
        if now is not None:
            out["ratelimit.blocked_now"] = self.ingress.blocked(now)
        out["amplification.addresses"] = len(self.budget)
        out["routing.peers"] = len(self.table)
        out["routing.refused.subnet"] = self.table.refused_subnet
        out["store.records"] = len(self.store)
        out["store.bytes"] = self.holdings.stored_bytes
        out["limit.rate_limit"] = cfg.rate_limit
        out["limit.rate_burst"] = cfg.rate_burst
        out["limit.rate_penalty"] = cfg.rate_penalty
        out["limit.amplification_factor"] = cfg.amplification_factor
        out["limit.max_records"] = cfg.max_records
        out["limit.max_store_bytes"] = cfg.max_store_bytes
        out["limit.max_records_per_source"] = cfg.max_records_per_source
        out["limit.max_bytes_per_source"] = cfg.max_bytes_per_source
        out["limit.max_per_subnet_bucket"] = cfg.max_per_subnet_bucket if cfg.subnet_limits else 0
        out["limit.max_per_subnet_table"] = cfg.max_per_subnet_table if cfg.subnet_limits else 0
        return out

    # ======================================================================================
    # Commands
    # ======================================================================================

    def ping(self, address: Address, now: float) -> int:
        """PING an address (its node id need not be known)."""
        qid = self._new_query_id()
        self._queries[qid] = _PingQuery(qid)
        if not self._send_request(address, None, Ping(), now, qid):
            self._fail(qid, "too many requests in flight")
        return qid

    def find_node_at(self, address: Address, target: NodeId, now: float) -> int:
        """One FIND_NODE to one address (no lookup): ends with :class:`NodesAnswered`."""
        qid = self._new_query_id()
        self._queries[qid] = _PingQuery(qid)
        if not self._send_request(address, None, FindNode(target), now, qid):
            self._fail(qid, "too many requests in flight")
        return qid

    def find_node(self, target: NodeId, now: float, *, paths: int | None = None) -> int:
        """Iterative FIND_NODE: ends with :class:`LookupDone` (the k closest that answered).

        ``paths`` overrides :attr:`KadConfig.disjoint_paths` for this lookup."""
        return self._start_lookup(target, now, want_value=False, paths=paths)

    def lookup_state(self, query_id: int) -> AnyLookup | None:
        """The state machine of the running lookup or get ``query_id`` (None once it ended,
        or for other operations). For observation only (the simulator scores each disjoint
        path from it); the caller must not drive it. It stays readable after the operation
        ended if the caller kept it."""
        query = self._queries.get(query_id)
        return query.lookup if isinstance(query, _LookupQuery) else None

    def get(
        self,
        key: NodeId,
        now: float,
        *,
        kind: RecordKind | None = None,
        paths: int | None = None,
        alpha: int | None = None,
    ) -> int:
        """Iterative FIND_VALUE: ends with :class:`GetDone` (``record`` None when not found).

        ``kind`` restricts the answer to one record kind. A get of a SIGNED record does not
        stop at the first value: it collects ``signed_get_quorum`` valid answers among the
        closest nodes, returns the highest sequence number and writes it back to the replicas
        that served an older one. Invalid values count against the peer that sent them.
        ``paths`` overrides :attr:`KadConfig.disjoint_paths` for this get, ``alpha`` the
        requests in flight (1 for the pieces of a large value: many gets run at once, and the
        nearest node asked first usually holds the piece, so more would only fetch it twice).
        """
        local = self.store.get(key, now)
        qid = self._new_query_id()
        if kind is RecordKind.SIGNED:
            held = local.record if local is not None and local.record.kind is kind else None
            return self._start_lookup(
                target=key,
                now=now,
                want_value=True,
                qid=qid,
                kind=kind,
                quorum=min(self.config.signed_get_quorum, self.config.k),
                local=held,
                paths=paths,
            )
        if local is not None and (kind is None or local.record.kind is kind):
            self._events.append(GetDone(qid, key, local.record, 0, 0))
            return qid
        return self._start_lookup(
            target=key, now=now, want_value=True, qid=qid, kind=kind, paths=paths, alpha=alpha
        )

    def put(
        self, record: Record, now: float, *, cas: int | None = None, republish: bool = False
    ) -> int:
        """Find the k closest to ``record.key`` and STORE on them: ends with :class:`PutDone`.

        ``cas`` (signed records) is the sequence number the writer expects to replace: storers
        holding a newer one refuse with CAS_MISMATCH. With ``republish`` this node is the
        record's publisher: it re-puts the record every ``publisher_republish_interval``
        (extending its TTL) until a newer version replaces it or :meth:`unpublish` is called.

        Raises :class:`ValidationError` at once for a record no peer would accept.
        """
        validate_record(record, self.config)
        if cas is not None:
            check_replace(None, record, cas)  # the argument rules (signed, seq > cas)
        if record_expiry(record, now, self.config) <= now:
            raise ValidationError("the record has already expired")
        if republish:
            self.publish_later(record, now + self.config.publisher_republish_interval)
        else:
            self._published.pop(record.key, None)
        qid = self._start_lookup(record.key, now, want_value=False, put_record=record, put_cas=cas)
        return qid

    def store_at(
        self, record: Record, contacts: Iterable[Contact], now: float, *, republish: bool = False
    ) -> int:
        """STORE ``record`` on ``contacts`` without a lookup: ends with :class:`PutDone`.

        For a driver that already knows the k closest to the key: the pieces of a large
        value share the lookups that found their neighbourhoods (core/blobflow.py). Each
        STORE carries the write token the contact gave us within ``TOKEN_REUSE`` of a
        rotation (tokens bind our address, not a key); a contact without one is skipped and
        counted in ``put.no_token``. As :meth:`put`, this node stores too when it is closer
        than the farthest contact; ``republish`` makes it the record's publisher.
        """
        validate_record(record, self.config)
        if record_expiry(record, now, self.config) <= now:
            raise ValidationError("the record has already expired")
        if republish:
            self.publish_later(record, now + self.config.publisher_republish_interval)
        targets: list[Candidate] = []
        for contact in contacts:
            token = self.tokens.fresh(contact.node_id, now)
            if token is None or contact.node_id == self.node_id:
                self.stats["put.no_token"] += token is None
                continue
            cand = Candidate(contact, int(contact.node_id ^ record.key), 0)
            cand.token = token
            targets.append(cand)
        targets.sort(key=lambda cand: cand.distance)
        put = _PutQuery(self._new_query_id(), record, 0)
        self._stores_on(put, None, targets, now)
        return put.query_id

    def publish_later(self, record: Record, due: float, base_ttl: int | None = None) -> None:
        """Remember ``record`` as ours and re-put it at ``due`` (then every
        ``publisher_republish_interval``). Drivers use it to restore published records after a
        restart; ``base_ttl`` is the lifetime each re-put grants from then on."""
        ttl = record.ttl if base_ttl is None else base_ttl
        self._published[record.key] = _Published(record, ttl, due)
        self._timer_seq += 1
        heapq.heappush(self._publish_heap, (due, self._timer_seq, record.key))

    def unpublish(self, key: NodeId) -> bool:
        """Stop republishing ``key`` (its copies then expire with their TTL)."""
        return self._published.pop(key, None) is not None

    def published(self) -> list[tuple[Record, int]]:
        """The records this node republishes as their publisher, with their base TTL."""
        return [(p.record, p.base_ttl) for p in self._published.values()]

    def leave(self, now: float) -> int:
        """Hand every record on to the nodes that keep it once we are gone.

        For each record, a FIND_VALUE lookup that does not stop at the value finds the k
        closest other nodes and which of them hold it already; the others get a STORE. (Our
        routing table alone cannot say who the new k-th closest is: a node knows only the
        peers it has talked to.) Ends with :class:`LeaveDone` when every lookup finished and
        every STORE was answered or timed out; the driver bounds the wait
        (``leave_timeout``)."""
        qid = self._new_query_id()
        keys = self._held.all()
        batch = _ReplBatch("leave", query_id=qid, records=len(keys), outstanding=len(keys))
        # Leaving supersedes any replication still waiting: it is about to be cut off.
        self._republish_ready.clear()
        self._repl_queue.clear()
        self._scans.clear()
        self._scan_wakeup = math.inf
        self._leaving = batch
        self.flags |= FLAG_LEAVING  # every datagram from now on says so
        self._republish_ready.extend(keys)
        if not keys:
            self._events.append(LeaveDone(qid, 0, 0, 0))
        self._start_republishes(now)
        return qid

    def bootstrap(self, seeds: Iterable[Address], now: float) -> int:
        """Join through known addresses: ping them, look up our own id, refresh farther
        buckets. Ends with :class:`BootstrapDone` or :class:`QueryFailed`."""
        qid = self._new_query_id()
        seed_list = list(dict.fromkeys(seeds))
        query = _BootstrapQuery(qid, seeds_waiting=0)
        self._queries[qid] = query
        for address in seed_list:
            if self._send_request(address, None, Ping(), now, qid):
                query.seeds_waiting += 1
        if query.seeds_waiting == 0:
            if len(self.table):
                self._bootstrap_lookups(query, now)
            else:
                self._fail(qid, "no bootstrap address to contact")
        return qid

    def refresh(self, now: float) -> None:
        """Look up a random id in every bucket idle for ``refresh_interval``."""
        for index in self.table.buckets_to_refresh(now):
            target = random_id_in_bucket(self.node_id, index, self.rng)
            self._start_lookup(target, now, want_value=False, internal=True)

    # ======================================================================================
    # Inputs
    # ======================================================================================

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Handle one datagram from ``address``. Invalid input is counted and dropped.

        The checks run cheapest first, and nothing changes before they all passed: the size,
        the source IP's rate limit (core/ratelimit.py), then the bounded decode with its
        schema checks and the signature or session AEAD; a STORE's token follows, and only
        then any state (routing table, store, sessions). The one exception is the 14-byte
        unknown-session notice, unauthenticated by nature, which can only make us re-send a
        request it names with a fresh handshake (core/session.py).
        """
        envelope = self.wire.open(data, address, now)
        if envelope is None:
            return
        message = envelope.message
        if type(message) in _REQUEST_CLASSES:
            if envelope.session is None and self.replays.replayed(data[-16:], now):
                # A session request's counter already guards it; a signed one has its
                # signature remembered for a while.
                self.stats["rx.dropped"] += 1
                self.stats["rx.dropped.replay"] += 1
                return
            self._handle_request(envelope, message, address, now, len(data))  # type: ignore[arg-type]
        else:
            self._handle_response(envelope, message, address, now)

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at ``now``: request timeouts and periodic upkeep."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, txid, kind = heapq.heappop(timers)
            pending = self._pending.get(txid)
            if pending is None:
                continue
            if kind == _SOFT:
                self._on_soft_timeout(pending, now)
            elif kind == _HARD:
                self._on_hard_timeout(pending, now)
            else:
                self._on_grace_over(pending, now)
        if now >= self.tokens.next_rotation:
            self.tokens.rotate(now)
        if now >= self._next_expiry:
            expired = self.store.expire(now)
            for key in expired:
                self.holdings.forget(key)
            self.stats["store.expired"] += len(expired)
            self.wire.expire(now)
            self._next_expiry = now + self.config.expire_interval
        if now >= self._next_refresh_check:
            self._next_refresh_check = now + self.config.refresh_check_interval
            self.refresh(now)
            if len(self._peer_since) > len(self.table):
                table = self.table
                self._peer_since = {n: t for n, t in self._peer_since.items() if n in table}
        if now >= self._next_neighbour_check:
            self._check_neighbours(now)
        if self._scans:
            self._run_scans(now)
        self._run_republish_timers(now)
        self._run_publisher_timers(now)
        self._pump_replication(now)

    # ======================================================================================
    # Serving requests
    # ======================================================================================

    def _handle_request(
        self,
        envelope: Envelope,
        request: Request,
        address: Address,
        now: float,
        request_size: int = MAX_DATAGRAM,
    ) -> None:
        self.stats[_RX_REQUEST_KEY[request.TYPE]] += 1
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "%s from %s at %s:%d", request.TYPE.name, envelope.sender_id.short(), *address
            )
        sender = envelope.sender_id
        verified = envelope.session is not None or self.wire.address_verified(sender, address, now)
        if not verified:
            self.budget.received(address, request_size)
        if type(request) is Store and not self.tokens.valid(request.token, address):
            # Refused before anything changes: no routing-table check of the sender, no
            # session accepted (a forged source cannot hold the token of the address).
            self.stats["store.rejected.token"] += 1
            refusal = Error(address, ErrorCode.BAD_TOKEN, "missing or expired write token")
            plain = dataclasses.replace(envelope, handshake=None)
            self.wire.respond(plain, refusal, address, now, request_size, verified)
            return
        # A stranger's verification PING comes out of its budget first; padded requests
        # leave room for it and a full answer (see ``_pad_to``).
        entry = self.table.get(sender)
        if envelope.flags & FLAG_LEAVING:
            self._peer_departing(sender)  # serve its handoff, but it is no peer any more
        elif entry is not None and entry.contact.address == address:
            entry.last_seen = now
        elif entry is None and not envelope.flags & FLAG_CLIENT:
            self._maybe_verify(Contact(sender, address[0], address[1]), now)
        elif entry is not None and not envelope.flags & FLAG_CLIENT:
            # A known node writes from a new address (it restarted on another port, or its
            # NAT mapping changed): PING it there; its signed answer moves the entry.
            self._check_liveness(Contact(sender, address[0], address[1]), now)

        response: Message
        match request:
            case Ping():
                response = Pong(address)
            case FindNode(target=target):
                token = self.tokens.issue(address)
                response = Nodes(address, token, self._closest_for(target, sender))
            case FindValue(key=key):
                token = self.tokens.issue(address)
                stored = self.store.get(key, now)
                if stored is not None:
                    response = Value(
                        address, token, for_transfer(stored.record, stored.expires_at, now)
                    )
                else:
                    response = Nodes(address, token, self._closest_for(key, sender))
            case Store(record=record, token=token, expected_seq=expected_seq):
                response = self._handle_store(record, token, expected_seq, address, now)
        self.wire.respond(envelope, response, address, now, request_size, verified)

    def _closest_for(self, target: NodeId, requester: NodeId) -> tuple[Contact, ...]:
        k = self.config.k
        contacts = self.table.closest(target, k + 1, include_stale=False)
        if contacts and requester ^ target > contacts[-1].node_id ^ target:
            return tuple(contacts[:k])  # the requester is farther than all of them
        return tuple([c for c in contacts if c.node_id != requester][:k])

    def _handle_store(
        self,
        record: Record,
        token: bytes,
        expected_seq: int | None,
        address: Address,
        now: float,
    ) -> Message:
        if not self.tokens.valid(token, address):
            self.stats["store.rejected.token"] += 1
            return Error(address, ErrorCode.BAD_TOKEN, "missing or expired write token")
        code, text = self.holdings.accept(
            record, expected_seq, now, validate=True, source=address[0]
        )
        if code is None:
            return Stored(address)
        return Error(address, code, text)

    # ======================================================================================
    # Handling responses
    # ======================================================================================

    def _handle_response(
        self, envelope: Envelope, message: Message, address: Address, now: float
    ) -> None:
        pending = self._pending.get(envelope.txid)
        if (
            pending is None
            or pending.address != address
            or (pending.node_id is not None and pending.node_id != envelope.sender_id)
        ):
            self.stats["rx.dropped"] += 1
            self.stats["rx.dropped.unsolicited"] += 1
            return
        if not _answers(pending.request, message):
            self.stats["rx.dropped"] += 1
            self.stats["rx.dropped.mismatch"] += 1
            return
        self._forget_pending(pending)
        self.wire.answered_from(address)
        if pending.offer is not None:
            self.wire.finish_handshake(pending.offer, envelope, address, now)
        self.stats[_RX_RESPONSE_KEY[message.TYPE]] += 1
        contact = Contact(envelope.sender_id, address[0], address[1])
        rtt = max(0.0, now - pending.sent_at)
        departing = bool(envelope.flags & FLAG_LEAVING)
        if departing:
            self._peer_departing(contact.node_id)
        elif not envelope.flags & FLAG_CLIENT:
            added, to_ping = self.table.observe(contact, now)
            if added:
                self._peer_added(contact, now)
            if to_ping is not None:
                self._check_liveness(to_ping, now)
        self.table.record_rtt(contact.node_id, rtt)
        self._verifying.discard(contact.node_id)
        observed = getattr(message, "observed", None)
        if observed is not None:
            self.observed_address = observed
        if isinstance(message, Nodes | Value) and message.token:
            self.tokens.remember(contact.node_id, message.token, now)

        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None:
            if isinstance(message, Value):
                self._late_value(contact, message, now)
            return
        match query:
            case _PingQuery():
                del self._queries[query.query_id]
                if isinstance(message, Nodes):  # find_node_at
                    self._events.append(
                        NodesAnswered(query.query_id, contact, message.contacts, rtt)
                    )
                elif not query.internal:
                    self._events.append(PingDone(query.query_id, contact, rtt))
            case _BootstrapQuery():
                query.seeds_waiting -= 1
                self._bootstrap_progress(query, now)
            case _LookupQuery():
                self._lookup_response(query, contact, message, now, departing)
            case _PutQuery():
                query.waiting.discard(envelope.txid)
                if departing:  # a copy that leaves with it (its handoff may be past this key)
                    self.stats["put.store_departing"] += 1
                elif isinstance(message, Stored):
                    query.acks.append(contact)
                else:
                    self.stats["put.store_refused"] += 1
                    if isinstance(message, Error):
                        query.errors.append((message.code, message.message))
                self._put_progress(query)
            case _ReplicationSink():
                item = self._repl_inflight.pop(envelope.txid, None)
                if item is not None:
                    stored = isinstance(message, Stored) and not departing
                    if not stored:
                        self.stats["replicate.refused"] += 1
                    self._repl_item_done(item, stored, now)
                    self._pump_replication(now)
            case _TokenQuery():
                del self._queries[query.query_id]
                self._token_arrived(query.node_id, now)

    def _on_soft_timeout(self, pending: Pending, now: float) -> None:
        pending.slow = True
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if isinstance(query, _LookupQuery) and pending.node_id is not None:
            query.lookup.on_soft_timeout(pending.node_id, pending.address)
            if not self._resend_and_wait(pending, now):
                query.lookup.on_give_up(pending.node_id, pending.address)
            self._advance(query, now)
        elif isinstance(query, _PutQuery):
            # A slow replica gets the same grace as a slow peer of a lookup (and one more
            # copy of its STORE): on a loaded machine an answer 50 ms late is common, and a
            # put that stops counting at the soft timeout reports fewer copies than it made.
            if not self._resend_and_wait(pending, now):
                query.waiting.discard(pending.txid)
                self._put_progress(query)
        elif isinstance(query, _ReplicationSink):
            # A slow STORE keeps its window slot until it is answered or fails for good:
            # when peers are slow (a loaded network), the sender slows down with them
            # instead of piling on more.
            self.stats["replicate.slow"] += 1

    def _resend_and_wait(self, pending: Pending, now: float) -> bool:
        """A lookup's or a put's request passed its soft timeout: send it once more and
        wait ``slow_grace`` for an answer (then :meth:`_on_grace_over`). False when the
        configuration gives no grace: the caller stops waiting now."""
        self.wire.retransmit(pending, now)
        grace = self.config.slow_grace
        if grace <= 0:
            return False
        self._push_timer(now + grace, pending.txid, _GRACE)
        return True

    def _on_grace_over(self, pending: Pending, now: float) -> None:
        """A slow peer of a lookup used up its grace: the lookup may finish without it (a
        put, likewise, without that replica's answer)."""
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if isinstance(query, _LookupQuery) and pending.node_id is not None:
            query.lookup.on_give_up(pending.node_id, pending.address)
            self._advance(query, now)
        elif isinstance(query, _PutQuery):
            query.waiting.discard(pending.txid)
            self._put_progress(query)

    def _on_hard_timeout(self, pending: Pending, now: float) -> None:
        self._forget_pending(pending)
        if pending.offer is not None:
            self.sessions.cancel_offer(pending.offer)
        self.stats["tx.timeouts"] += 1
        if pending.node_id is not None:
            self._verifying.discard(pending.node_id)
            # A failure counts against the node only at the address the table holds for
            # it: silence at another address (one a hostile peer named it at, or a new one
            # being checked) says nothing about the node where we know it.
            entry = self.table.get(pending.node_id)
            if entry is not None and entry.contact.address == pending.address:
                removed = self.table.record_failure(pending.node_id)
                if removed is not None:
                    self._peer_removed(removed, now)
            elif entry is not None:
                self.stats["tx.timeouts.other_address"] += 1
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None:
            return
        match query:
            case _PingQuery():
                del self._queries[query.query_id]
                if not query.internal:
                    host, port = pending.address
                    self._fail(query.query_id, f"no answer from {host}:{port}")
            case _BootstrapQuery():
                query.seeds_waiting -= 1
                self._bootstrap_progress(query, now)
            case _LookupQuery():
                if pending.node_id is not None:
                    query.lookup.on_failure(pending.node_id, pending.address)
                self._advance(query, now)
            case _PutQuery():
                query.waiting.discard(pending.txid)
                self._put_progress(query)
            case _ReplicationSink():
                item = self._repl_inflight.pop(pending.txid, None)
                if item is not None:
                    self._repl_item_done(item, False, now)
                    self._pump_replication(now)
            case _TokenQuery():
                del self._queries[query.query_id]
                self._token_arrived(query.node_id, now)

    # ======================================================================================
    # Lookups
    # ======================================================================================

    def _start_lookup(
        self,
        target: NodeId,
        now: float,
        *,
        want_value: bool,
        internal: bool = False,
        put_record: Record | None = None,
        put_cas: int | None = None,
        qid: int | None = None,
        bootstrap: _BootstrapQuery | None = None,
        kind: RecordKind | None = None,
        quorum: int = 1,
        local: Record | None = None,
        republish: bool = False,
        leave: _ReplBatch | None = None,
        paths: int | None = None,
        alpha: int | None = None,
    ) -> int:
        if qid is None:
            qid = self._new_query_id()
        # Seed with more than k: when the closest entries turn out dead (their failures are
        # not known yet), the lookup falls back on the next ones we know instead of ending
        # with fewer than k answers. Extra seeds cost nothing unless they are needed.
        seeds = self.table.closest(target, 2 * self.config.k)
        self.table.touch(target, now)
        lookup = new_lookup(
            target,
            self.node_id,
            self.config.k,
            self.config.alpha if alpha is None else alpha,
            seeds,
            self.config.disjoint_paths if paths is None else paths,
        )
        query = _LookupQuery(
            qid,
            lookup,
            want_value,
            internal,
            put_record=put_record,
            put_cas=put_cas,
            kind=kind,
            quorum=quorum,
            local=local,
            bootstrap=bootstrap,
            republish=republish,
            leave=leave,
        )
        self._queries[qid] = query
        self.stats["lookups.started"] += 1
        self._advance(query, now)
        return qid

    def _lookup_response(
        self,
        query: _LookupQuery,
        contact: Contact,
        message: Message,
        now: float,
        departing: bool = False,
    ) -> None:
        lookup = query.lookup
        # A leaving peer's answer is used (its contacts, a value it returns) but it does not
        # count among the closest: nothing is stored on it and it holds nothing for a leave.
        answered = lookup.on_departing if departing else lookup.on_response
        if isinstance(message, Nodes):
            # The decoder bounds a NODES answer at 32 contacts; we use at most k of them.
            contacts = self._acceptable(message.contacts[: self.config.k], contact.host)
            answered(contact.node_id, contacts, message.token, contact.address)
        elif isinstance(message, Value):
            record = message.record
            valid = record.key == lookup.target
            if valid:
                try:
                    validate_record(record, self.config)
                except ValidationError:
                    valid = False
                else:
                    valid = record_expiry(record, now, self.config) > now
            if not valid:
                # Honest storers validate what they keep: an invalid value is the peer's fault.
                self.stats["get.invalid_value"] += 1
                self._penalise(contact.node_id)
                query.holders.add(contact.node_id)  # and no copy of ours goes to it either
                answered(contact.node_id, (), message.token, contact.address)
            elif query.kind is not None and record.kind is not query.kind:
                self.stats["get.wrong_kind"] += 1
                answered(contact.node_id, (), message.token, contact.address)
            elif query.leave is not None:
                # A leave wants to know who holds it, not just the value: keep going.
                answered(contact.node_id, (), message.token, contact.address)
                if not departing:
                    query.holders.add(contact.node_id)
            else:
                answered(contact.node_id, (), message.token, contact.address)
                if not departing:
                    query.holders.add(contact.node_id)
                query.answers.append((contact, record, message.token))
                if query.found is None or record.supersedes(query.found):
                    query.found = record
                if len(query.answers) >= query.quorum:
                    lookup.finish()
        else:  # an ERROR answer: the peer is alive but useless for this lookup
            lookup.on_failure(contact.node_id, contact.address, final=True)
        self._advance(query, now)

    def _acceptable(self, contacts: tuple[Contact, ...], via: str) -> tuple[Contact, ...]:
        """The contacts of a NODES answer from host ``via`` worth asking: never unusable
        addresses (unspecified, multicast), and loopback or private ones only from a peer
        that is itself local (a public peer listing them points us at our own LAN, or
        invents them), and only if ``allow_private_addresses``."""
        local_ok = self.config.allow_private_addresses and not is_public(via)
        acceptable = is_usable if local_ok else is_public
        # The common case (every contact acceptable) in C-level iteration: this runs for
        # every contact of every NODES answer.
        if all(map(acceptable, map(_HOST, contacts))):
            return contacts
        kept = tuple(c for c in contacts if acceptable(c.host))
        if len(kept) != len(contacts):
            self.stats["lookup.contacts_refused"] += len(contacts) - len(kept)
        return kept

    def _advance(self, query: _LookupQuery, now: float) -> None:
        lookup = query.lookup
        if not lookup.finished:
            for contact in lookup.next_queries():
                request: Request = (
                    FindValue(lookup.target) if query.want_value else FindNode(lookup.target)
                )
                if not self._send_request(
                    contact.address, contact.node_id, request, now, query.query_id
                ):
                    lookup.on_failure(contact.node_id, contact.address, final=True)
                    query.overloaded = True
            if query.overloaded and lookup.in_flight == 0 and lookup.slow == 0:
                # Refused by the request limit with nothing left in flight: no answer will
                # ever advance it again, so it ends here (and reports the overload).
                lookup.finish()
        if lookup.finished or lookup.is_done:
            # Answers still in flight come from outside the final k and cannot change it.
            self._finish_lookup(query, now)

    def _finish_lookup(self, query: _LookupQuery, now: float) -> None:
        qid = query.query_id
        if self._queries.get(qid) is not query:
            return
        del self._queries[qid]
        lookup = query.lookup
        lookup.finish()
        closest = lookup.closest_responded()
        if query.bootstrap is not None:
            self._bootstrap_lookup_done(query.bootstrap, now)
            return
        if query.republish:
            self._republishing -= 1
            self._republish_stores(lookup.target, closest, now, query)
            self._start_republishes(now)
            return
        if query.internal and query.put_record is None:
            return
        if query.local is not None and (query.found is None or query.local.supersedes(query.found)):
            query.found = query.local
        if (
            not query.internal
            and query.found is None
            and (query.overloaded or (lookup.responses == 0 and lookup.queries_sent > 0))
        ):
            # A search that asked peers and heard from none (or was cut short) proves nothing:
            # "not found" or "stored" would be a lie, so the caller gets a failure to retry.
            # A node that knows no peer at all is a network of one and answers from itself.
            reason = (
                "too many requests in flight; retry later"
                if query.overloaded
                else "no peer answered"
            )
            self._events.append(QueryFailed(qid, reason))
            return
        if query.put_record is not None:  # a user's put, or the publisher's own re-put
            self._start_stores(query, closest, now)
            return
        if query.want_value:
            repaired = 0
            if query.found is not None:
                repaired = self._repair_replicas(query, query.found, now)
                self._cache_value(query, query.found, now)
            self._events.append(
                GetDone(
                    qid,
                    lookup.target,
                    query.found,
                    lookup.hops,
                    lookup.queries_sent,
                    answers=len(query.answers),
                    repaired=repaired,
                )
            )
            return
        self._events.append(
            LookupDone(
                qid,
                lookup.target,
                tuple(c.contact for c in closest),
                lookup.hops,
                lookup.queries_sent,
            )
        )

    def _repair_replicas(self, query: _LookupQuery, best: Record, now: float) -> int:
        """Write the newest signed record back to the replicas that answered with an older
        one (each gave us a write token with its answer), and to our own store."""
        if best.kind is not RecordKind.SIGNED:
            return 0
        recent = self._recent_signed
        recent[best.key] = best
        recent.move_to_end(best.key)
        if len(recent) > _RECENT_SIGNED:
            recent.popitem(last=False)
        repaired = 0
        for contact, record, token in query.answers:
            if record.seq < best.seq and token:
                self._send_request(contact.address, contact.node_id, Store(best, token), now, None)
                repaired += 1
        if query.local is not None and best.seq > query.local.seq:
            self.holdings.accept(best, None, now, validate=False)
        self.stats["get.repaired"] += repaired
        return repaired

    def _late_value(self, contact: Contact, message: Value, now: float) -> None:
        """A replica answered a signed get that already returned: if its copy is older than
        what the get found, correct it too."""
        record = message.record
        best = self._recent_signed.get(record.key)
        if (
            best is not None
            and record.kind is RecordKind.SIGNED
            and record.seq < best.seq
            and message.token
        ):
            self._send_request(
                contact.address, contact.node_id, Store(best, message.token), now, None
            )
            self.stats["get.repaired"] += 1

    def _penalise(self, node_id: NodeId) -> None:
        """``node_id`` sent us something provably bad: a strike against it (see
        :attr:`strikes`), and a failure in the routing table, as if it had not answered."""
        self.stats["peer.misbehaved"] += 1
        strikes = self.strikes
        strikes[node_id] = strikes.pop(node_id, 0) + 1
        if len(strikes) > _STRIKES:
            strikes.popitem(last=False)
        removed = self.table.record_failure(node_id)
        if removed is not None:
            self._events.append(PeerRemoved(removed))

    def _cache_value(self, query: _LookupQuery, record: Record, now: float) -> None:
        """Store a found value at the closest node that answered without it (paper §2.3)."""
        for cand in query.lookup.closest_responded():
            if cand.token and cand.contact.node_id not in query.holders:
                self._send_request(
                    cand.contact.address, cand.contact.node_id, Store(record, cand.token), now, None
                )
                self.stats["get.cached"] += 1
                return

    # ======================================================================================
    # Puts
    # ======================================================================================

    def _start_stores(self, query: _LookupQuery, closest: list[Candidate], now: float) -> None:
        record = query.put_record
        assert record is not None
        put = _PutQuery(query.query_id, record, query.lookup.queries_sent, internal=query.internal)
        self._stores_on(put, query.put_cas, [cand for cand in closest if cand.token], now)

    def _stores_on(
        self, put: _PutQuery, cas: int | None, targets: list[Candidate], now: float
    ) -> None:
        """STORE ``put.record`` on ``targets`` (nearest first, each with a token), and on
        this node when it is among them."""
        record = put.record
        self._queries[put.query_id] = put
        # We store too when we are among the k closest (in a small network we may be one of
        # the nodes that should hold the record) unless we are a client that will not serve.
        own_distance = self.node_id ^ record.key
        if not self.flags & FLAG_CLIENT and (
            len(targets) < self.config.k or own_distance < targets[-1].distance
        ):
            own = Contact(self.node_id, *(self.address or self.observed_address or ("0.0.0.0", 1)))
            code, text = self.holdings.accept(record, cas, now, validate=False)
            if code is None:
                put.acks.append(own)
            else:
                put.errors.append((code, text))
            if len(targets) >= self.config.k:
                targets = targets[:-1]
        for cand in targets:
            txid = self._send_request(
                cand.contact.address,
                cand.contact.node_id,
                Store(record, cand.token, cas),
                now,
                put.query_id,
            )
            if txid:
                put.waiting.add(txid)
        self._put_progress(put)

    def _put_progress(self, put: _PutQuery) -> None:
        if put.waiting or self._queries.get(put.query_id) is not put:
            return
        del self._queries[put.query_id]
        if put.internal:
            self.stats["publish.republished"] += 1
            if any(code in _SUPERSEDED for code, _ in put.errors):
                # Somebody published a newer version under this key: ours is history.
                published = self._published.get(put.record.key)
                if published is not None and published.record == put.record:
                    del self._published[put.record.key]
                    self.stats["publish.superseded"] += 1
            return
        self._events.append(
            PutDone(
                put.query_id,
                put.record.key,
                len(put.acks),
                tuple(put.acks),
                put.queries,
                tuple(put.errors),
            )
        )

    # ======================================================================================
    # Bootstrap
    # ======================================================================================

    def _bootstrap_progress(self, query: _BootstrapQuery, now: float) -> None:
        """A seed answered or timed out. The first answer is enough to start the lookups;
        later answers still enter the table."""
        if query.phase != "seeds" or self._queries.get(query.query_id) is not query:
            return
        if len(self.table):
            self._bootstrap_lookups(query, now)
        elif query.seeds_waiting == 0:
            self._fail(query.query_id, "no bootstrap peer answered")

    def _bootstrap_lookups(self, query: _BootstrapQuery, now: float) -> None:
        query.phase = "self"
        query.lookups_waiting = 1
        self._start_lookup(self.node_id, now, want_value=False, internal=True, bootstrap=query)

    def _bootstrap_lookup_done(self, query: _BootstrapQuery, now: float) -> None:
        query.lookups_waiting -= 1
        if query.lookups_waiting > 0:
            return
        if query.phase == "self" and self.config.join_refresh:
            # Our own neighbourhood is known; now refresh every bucket farther than our
            # nearest neighbour, so the table covers the whole id space.
            query.phase = "refresh"
            sizes = self.table.bucket_sizes()
            nearest = max(sizes) if sizes else 0
            targets = [random_id_in_bucket(self.node_id, i, self.rng) for i in range(nearest)]
            query.lookups_waiting = len(targets)
            for target in targets:
                self._start_lookup(target, now, want_value=False, internal=True, bootstrap=query)
            if targets:
                return
        if query.lookups_waiting <= 0 and self._queries.get(query.query_id) is query:
            del self._queries[query.query_id]
            self._events.append(BootstrapDone(query.query_id, len(self.table)))

    # ======================================================================================
    # Routing-table upkeep
    # ======================================================================================

    def _maybe_verify(self, contact: Contact, now: float) -> None:
        """A stranger sent us a request: PING it before it may enter the table (its source
        address could be forged), but only when its bucket has room for it."""
        if contact.node_id in self._verifying or contact.node_id in self._awaiting:
            return  # already being checked, or about to answer us anyway
        if len(self._verifying) >= self.config.max_pending_verifications:
            return
        if not self.table.has_room_for(contact.node_id):
            return
        self._check_liveness(contact, now)

    def _check_liveness(self, contact: Contact, now: float) -> None:
        """PING ``contact`` unless a check is already under way; the answer (or its
        absence) updates the routing table. An unverified address pays the PING from its
        amplification budget; without enough left, no PING (it may ask again later)."""
        if contact.node_id in self._verifying:
            return
        address = contact.address
        if address in self.budget and self.budget.allowance(address) < MAX_PING_BYTES:
            self.stats["verify.skipped.amplification"] += 1
            return
        if self._send_request(contact.address, contact.node_id, Ping(), now, None):
            self._verifying.add(contact.node_id)

    def _peer_departing(self, node_id: NodeId) -> None:
        """A peer said it is leaving: out of the table now, a spare in its place. No repair
        scan: a clean leaver hands its records on itself."""
        removed = self.table.depart(node_id)
        if removed is not None:
            self.stats["peer.departed"] += 1
            self._events.append(PeerRemoved(removed))
            self.tokens.forget(node_id)
            self._peer_since.pop(node_id, None)

    def _peer_added(self, contact: Contact, now: float) -> None:
        self._events.append(PeerAdded(contact))
        self._peer_since[contact.node_id] = now
        if _log.isEnabledFor(logging.INFO):
            _log.info("peer %s joined the routing table", contact)
        if len(self._held):
            self._start_scan(contact, True, now)

    def _peer_removed(self, contact: Contact, now: float) -> None:
        """A peer failed and left the routing table: the records it held with us need a
        prompt repair."""
        self._events.append(PeerRemoved(contact))
        self.tokens.forget(contact.node_id)
        self._peer_since.pop(contact.node_id, None)
        if len(self._held):
            self._start_scan(contact, False, now)

    # ======================================================================================
    # Durability: republish, handoff, repair, leave
    # ======================================================================================

    def _loaded(self, key: NodeId, stored_at: float, now: float) -> None:
        """A record found in a persistent store at start-up gets a republish timer; those
        overdue are spread over the next ``repair_delay`` seconds."""
        due = stored_at + self._republish_period()
        if due <= now:
            due = now + self.config.repair_delay * self.rng.random()
        self._schedule.arm(key, due, stored_at)

    def _republish_period(self) -> float:
        cfg = self.config
        return cfg.republish_interval * (1.0 - cfg.republish_jitter * self.rng.random())

    def _arm(self, key: NodeId, base: float, now: float) -> None:
        self._schedule.arm(key, now + self._republish_period(), base)

    # --- holder republish ------------------------------------------------------------

    def _run_republish_timers(self, now: float) -> None:
        schedule = self._schedule
        for key, state in schedule.pop_due(now):
            stored = self.store.get(key, now)
            if stored is None:
                self.holdings.forget(key)
                continue
            if state.repair_after is not None and now < state.regular:
                self._repair(key, state, stored.stored_at, now)
                continue
            if stored.stored_at > state.base and self._among_closest(key):
                # Another holder re-stored it since we armed the timer: our turn is skipped.
                # (Only for one of the k closest: a holder outside them republishes anyway,
                # which hands the record to the k closest and lets its surplus copy go.)
                self.stats["republish.skipped"] += 1
                schedule.arm(key, stored.stored_at + self._republish_period(), stored.stored_at)
                continue
            schedule.arm(key, now + self._republish_period(), stored.stored_at)
            self._republish_ready.append(key)
        self._start_republishes(now)

    def _among_closest(self, key: NodeId) -> bool:
        """Whether we are among the k closest live nodes we know to ``key``."""
        k = self.config.k
        others = self.table.closest(key, k, include_stale=False)
        return len(others) < k or self.node_id ^ key < others[-1].node_id ^ key

    def _repair(self, key: NodeId, state: DueState, stored_at: float, now: float) -> None:
        """A repair came due before the regular republish."""
        assert state.repair_after is not None
        if stored_at > state.repair_after:
            # It reached us again since the death was found: another holder repaired it.
            self.stats["repair.skipped"] += 1
            self._schedule.repair_done(key)
            return
        state.last_repair = now
        if state.repair_full:
            # The last republish fell short of k: a full one (lookup, then k STOREs).
            self.stats["repair.full"] += 1
            self._schedule.arm(key, now + self._republish_period(), stored_at)
            self._republish_ready.append(key)
            return
        self._top_up(key, max(1, state.repair_deaths), now)
        self._schedule.repair_done(key)

    def _top_up(self, key: NodeId, deaths: int, now: float) -> None:
        """Repair after holders died, from the routing table: STORE on the nodes that moved
        up into the last places of the k closest live nodes we know, one per death (at
        most three: beyond that the shortfall is the hourly republish's job). Holders are
        left alone: a STORE would count as a fresh receipt and postpone their republish,
        the exact check (a lookup) that also lets surplus copies go. Newcomers get records
        by handoff. A repairing holder is one of the closest to the key, where its table
        is most complete."""
        k = self.config.k
        others = self.table.closest(key, k, include_stale=False)
        own_distance = self.node_id ^ key
        if len(others) >= k and own_distance < others[-1].node_id ^ key:
            others = others[: k - 1]  # we hold one of the k places ourselves
        targets = others[len(others) - min(deaths, TOP_UP_MAX, len(others)) :]
        if not targets:
            return
        batch = _ReplBatch("repair", key=key)
        items = [_ReplItem(c, key, batch) for c in targets]
        batch.outstanding = len(items)
        self.stats["repair.topups"] += 1
        self.stats["repair.stores"] += len(items)
        self._repl_queue.extend(items)

    def _start_republishes(self, now: float) -> None:
        # A lookup can finish inside _start_lookup (nobody to ask) and call back here:
        # the outer loop carries on instead of recursing once per waiting record.
        if self._starting_republishes:
            return
        self._starting_republishes = True
        try:
            limit = self.config.max_concurrent_republish
            leaving = self._leaving
            while self._republish_ready and self._republishing < limit:
                key = self._republish_ready.popleft()
                if key not in self._held:
                    if leaving is not None:
                        self._repl_batch_step(leaving, 1, 0, now)
                    continue
                self._republishing += 1
                self.stats["leave.lookups" if leaving else "republish.started"] += 1
                self._start_lookup(
                    key,
                    now,
                    want_value=leaving is not None,
                    internal=True,
                    republish=True,
                    leave=leaving,
                )
        finally:
            self._starting_republishes = False

    def _republish_stores(
        self, key: NodeId, closest: list[Candidate], now: float, query: _LookupQuery
    ) -> None:
        """The republish lookup for ``key`` found ``closest``: STORE on the k closest (when
        leaving: on those of them that answered without the value)."""
        stored = self.store.get(key, now)
        k = self.config.k
        leave = query.leave
        if leave is not None:
            holders = query.holders
            items = (
                []
                if stored is None
                else [
                    _ReplItem(c.contact, key, leave)
                    for c in closest
                    if c.contact.node_id not in holders
                ]
            )
            leave.outstanding += len(items)
            self._repl_queue.extendleft(reversed(items))
            self._repl_batch_step(leave, 1, 0, now)  # the lookup itself is done
            self._pump_replication(now)
            return
        if stored is None:
            return
        own_distance = self.node_id ^ key
        among = len(closest) < k or own_distance < closest[-1].distance
        targets = closest[: k - 1] if among else closest[:k]
        batch = _ReplBatch("republish", key=key, record=stored.record, own_copy=among)
        if not among:
            # k nodes closer than us answered: once all of them stored it, our copy is
            # surplus (keeping it would make every former holder republish it for ever).
            batch.drop_after_acks = math.ceil(DROP_SHARE * k)
        items = [_ReplItem(c.contact, key, batch) for c in targets]
        batch.outstanding = len(items)
        if not items:
            self._republish_outcome(batch, now)
            return
        self._repl_queue.extend(items)
        self._pump_replication(now)

    def _republish_outcome(self, batch: _ReplBatch, now: float) -> None:
        """A republish finished. Surplus copy handed over: drop it. Fewer than k copies
        confirmed while we know k nodes (the lookup lost peers to timeouts right after
        deaths, or under load): try again after ``repair_delay`` (doubling each time, up to
        the interval) instead of leaving the record short for a whole interval."""
        key = batch.key
        assert key is not None
        if batch.drop_after_acks and batch.acks >= batch.drop_after_acks:
            current = self.store.get(key, now)
            if current is not None and current.record == batch.record:
                self.holdings.remove(key)
                self.stats["republish.handed_over"] += 1
            return
        state = self._schedule.get(key)
        if state is None:
            return
        k = self.config.k
        copies = batch.acks + (1 if batch.own_copy else 0)
        if copies >= k or len(self.table) + 1 < k:
            state.shortfalls = 0
            return
        state.shortfalls += 1
        self.stats["republish.short"] += 1
        cfg = self.config
        delay = min(cfg.repair_delay * 2 ** (state.shortfalls - 1), cfg.republish_interval)
        self._schedule.request_repair(
            key, now, now + delay * (1.0 + self.rng.random()), cfg.repair_cooldown, full=True
        )

    # --- publisher republish ---------------------------------------------------------

    def _run_publisher_timers(self, now: float) -> None:
        heap = self._publish_heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            published = self._published.get(key)
            if published is None or published.due != due:
                continue
            old = published.record
            # Same publication (timestamp and value), longer life: storers keep the
            # version with the larger TTL, and a newer write by anyone else still wins.
            # (Without a publication time the TTL counts from arrival: the base TTL again.)
            if old.timestamp_ms == 0:
                ttl = published.base_ttl
            else:
                ttl = max(old.ttl, math.ceil(now - old.published_at) + published.base_ttl)
            record = dataclasses.replace(old, ttl=ttl)  # a signed record keeps its signature
            published.record = record
            published.due = now + self.config.publisher_republish_interval
            self._timer_seq += 1
            heapq.heappush(heap, (published.due, self._timer_seq, key))
            self.stats["publish.started"] += 1
            self._start_lookup(key, now, want_value=False, internal=True, put_record=record)

    # --- liveness of the neighbours ---------------------------------------------------

    def _check_neighbours(self, now: float) -> None:
        """PING our k closest neighbours not heard from in a check interval (only while we
        hold records: they are our records' co-holders). A dead co-holder that still looked
        alive would go on counting as the one who hands records to newcomers."""
        interval = self.config.neighbour_check_interval
        self._next_neighbour_check = now + interval * (0.9 + 0.2 * self.rng.random())
        if not len(self._held) or self.flags & FLAG_CLIENT:
            return
        table = self.table
        for contact in table.closest(self.node_id, self.config.k):
            entry = table.get(contact.node_id)
            if entry is not None and now - entry.last_seen >= interval:
                self.stats["neighbours.checked"] += 1
                self._check_liveness(contact, now)

    # --- handoff and repair scans ----------------------------------------------------

    def _start_scan(self, peer: Contact, joined: bool, now: float) -> None:
        start = self._scan_start(peer.node_id)
        if start is None:
            return
        self._scans.append(_Scan(peer, joined, start))
        self._scan_wakeup = min(self._scan_wakeup, now)

    def _scan_start(self, peer: NodeId) -> int | None:
        """The smallest XOR distance (from our id) of a held key for which ``peer`` can be
        among the k closest known nodes; None when there is none.

        Let ``c`` be the prefix length we share with the peer. Every key sharing more than
        ``c`` bits with us is closer to us, and to every node in our deeper buckets, than to
        the peer; if those nodes and we make k, the peer ranks beyond k for all such keys,
        which are exactly the held keys nearer than ``2**(255-c)``.
        """
        cpl = ID_BITS - (self.node_id ^ peer).bit_length()
        deeper = 1 + sum(size for i, size in self.table.bucket_sizes().items() if i > cpl)
        start = 0 if deeper < self.config.k else 1 << (ID_BITS - 1 - cpl)
        return start if self._held.from_distance(start, 1) else None

    def _run_scans(self, now: float) -> None:
        budget = self.config.scan_batch
        while self._scans and budget > 0:
            scan = self._scans[0]
            if scan.joined and scan.peer.node_id not in self.table:
                self._scans.popleft()
                continue
            keys = self._held.from_distance(scan.next_distance, budget)
            budget -= len(keys)
            if keys:
                scan.next_distance = (keys[-1] ^ self.node_id) + 1
                if scan.joined:
                    self._handoff_keys(scan.peer, keys, now)
                else:
                    self._repair_keys(scan.peer, keys, now)
            if budget > 0:  # the scan ran out of keys before the budget ran out
                self._scans.popleft()
        self._scan_wakeup = now if self._scans else math.inf

    def _ranker(self, peer: NodeId) -> _Ranker:
        """Counts for ranking many keys against ``peer`` (see :class:`_Ranker`)."""
        own = self.node_id
        by_peer: dict[int, int] = {(own ^ peer).bit_length(): 1}  # ourselves
        by_own: dict[int, list[float]] = {}
        since = self._peer_since
        inf = math.inf
        for entry in self.table.entries():
            node_id = entry.contact.node_id
            if node_id == peer:
                continue
            bits = (node_id ^ peer).bit_length()
            by_peer[bits] = by_peer.get(bits, 0) + 1
            if not entry.failures:
                bits = (node_id ^ own).bit_length()
                joined = since.get(node_id, inf)
                group = by_own.get(bits)
                if group is None:
                    by_own[bits] = [joined]
                else:
                    group.append(joined)
        for group in by_own.values():
            group.sort()
        return _Ranker(
            own,
            peer,
            [(bits - 1, count) for bits, count in by_peer.items()],
            [(bits - 1, group) for bits, group in by_own.items()],
        )

    def _handoff_keys(self, peer: Contact, keys: list[NodeId], now: float) -> None:
        """Hand ``peer`` (new in our table) the records among ``keys`` it should hold: those
        for which it is among the k closest we know, if we are among the
        ``handoff_redundancy`` closest likely holders (so not all k holders send the same
        record; peers that joined after the record last reached us are not counted as
        holders, or a crowd of newcomers would silence everyone; a dead holder stops
        counting once a neighbour check finds it stale)."""
        k = self.config.k
        redundancy = self.config.handoff_redundancy
        ranker = self._ranker(peer.node_id)
        items: list[_ReplItem] = []
        batch = _ReplBatch("handoff")
        for key in keys:
            if ranker.closer_than_peer(key) >= k:
                continue
            stored = self.store.get(key, now)
            if stored is None:
                continue
            if ranker.closer_than_us(key, stored.stored_at, redundancy) < redundancy:
                items.append(_ReplItem(peer, key, batch))
        if items:
            batch.outstanding = len(items)
            self.stats["handoff.records"] += len(items)
            self._repl_queue.extend(items)

    def _repair_keys(self, dead: Contact, keys: list[NodeId], now: float) -> None:
        """``dead`` failed: re-replicate soon every record among ``keys`` it was among the k
        closest for.

        De-duplicated three ways: one timer per record; the holders take turns by rank (the
        closest live holder goes after ``repair_delay``, the r-th after ``(1 + r)`` delays,
        by when the first one's STORE has reached it and it stands down: a record that
        arrived again after the death was found needs no repair; random jitter alone would
        let every survivor fire at once when they all see the same deaths); and a node
        forces at most one repair per record per ``repair_cooldown``."""
        k = self.config.k
        delay = self.config.repair_delay
        ranker = self._ranker(dead.node_id)
        for key in keys:
            if ranker.closer_than_peer(key) >= k:
                continue
            rank = ranker.closer_than_us(key, math.inf, k)
            due = now + delay * (1.0 + rank + 0.5 * self.rng.random())
            if self._schedule.request_repair(
                key, now, due, self.config.repair_cooldown, death=True
            ):
                self.stats["repair.scheduled"] += 1

    # --- the replication queue -------------------------------------------------------

    def _pump_replication(self, now: float) -> None:
        """Send queued replication STOREs while fewer than ``replication_window`` are in
        flight."""
        queue = self._repl_queue
        window = self.config.replication_window
        inflight = self._repl_inflight
        while queue and len(inflight) < window:
            item = queue.popleft()
            stored = self.store.get(item.key, now)
            if stored is None:
                self._repl_item_done(item, False, now)
                continue
            token = self.tokens.fresh(item.contact.node_id, now)
            if token is None:
                self._await_token(item, now)
                continue
            contact = item.contact
            request = Store(for_transfer(stored.record, stored.expires_at, now), token)
            txid = self._send_request(
                contact.address, contact.node_id, request, now, _REPLICATION_QID
            )
            if not txid:  # too many requests in flight: try again on the next tick
                queue.appendleft(item)
                break
            item.batch.sent += 1
            self.stats["replicate.stores"] += 1
            inflight[txid] = item

    def _repl_item_done(self, item: _ReplItem, stored: bool, now: float) -> None:
        self._repl_batch_step(item.batch, 1, 1 if stored else 0, now)

    def _repl_batch_step(self, batch: _ReplBatch, done: int, acks: int, now: float) -> None:
        batch.outstanding -= done
        batch.acks += acks
        if batch.outstanding > 0:
            return
        if batch.kind == "leave":
            assert batch.query_id is not None
            self._events.append(LeaveDone(batch.query_id, batch.records, batch.sent, batch.acks))
        elif batch.kind == "republish":
            self._republish_outcome(batch, now)

    def _await_token(self, item: _ReplItem, now: float) -> None:
        """Park ``item`` until its peer gives us a write token (one FIND_NODE per peer)."""
        node_id = item.contact.node_id
        waiters = self._token_waiters.get(node_id)
        if waiters is not None:
            waiters.append(item)
            return
        qid = self._new_query_id()
        self._queries[qid] = _TokenQuery(qid, node_id)
        contact = item.contact
        if not self._send_request(contact.address, node_id, FindNode(self.node_id), now, qid):
            del self._queries[qid]
            self._repl_item_done(item, False, now)
            return
        self.stats["replicate.token_requests"] += 1
        self._token_waiters[node_id] = [item]

    def _token_arrived(self, node_id: NodeId, now: float) -> None:
        """A token request was answered (or failed): release the items parked on it."""
        waiters = self._token_waiters.pop(node_id, [])
        if self.tokens.fresh(node_id, now) is None:
            for item in waiters:
                self._repl_item_done(item, False, now)
        else:
            self._repl_queue.extendleft(reversed(waiters))
        self._pump_replication(now)

    # ======================================================================================
    # Sending
    # ======================================================================================

    def _forget_pending(self, pending: Pending) -> None:
        del self._pending[pending.txid]
        node_id = pending.node_id
        if node_id is not None:
            left = self._awaiting[node_id] - 1
            if left:
                self._awaiting[node_id] = left
            else:
                del self._awaiting[node_id]
        self.wire.forget(pending)

    def _send_request(
        self,
        address: Address,
        node_id: NodeId | None,
        request: Request,
        now: float,
        query_id: int | None,
    ) -> bytes:
        """Send a request and arm its timers; returns its txid, or b"" if over the limit."""
        if len(self._pending) >= self.config.max_pending_requests:
            self.stats["tx.refused.pending_limit"] += 1
            return b""
        self.ingress.expect(address[0])  # its answer is paid for
        txid = self.rng.randbytes(8)
        while txid in self._pending:
            txid = self.rng.randbytes(8)
        pending = Pending(txid, address, node_id, request, now, query_id)
        self._pending[txid] = pending
        if node_id is not None:
            self._awaiting[node_id] = self._awaiting.get(node_id, 0) + 1
        self.stats[_TX_REQUEST_KEY[request.TYPE]] += 1
        self.wire.transmit(pending, now)
        if node_id is not None:
            soft = self.table.soft_timeout(node_id)
        else:
            soft = self.config.max_soft_timeout
        self._push_timer(now + soft, txid, _SOFT)
        self._push_timer(now + self.config.request_timeout, txid, _HARD)
        return txid

    def _push_timer(self, deadline: float, txid: bytes, kind: int) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, txid, kind))

    def _new_query_id(self) -> int:
        qid = self._next_query_id
        self._next_query_id += 1
        return qid

    def _fail(self, qid: int, reason: str) -> None:
        self._queries.pop(qid, None)
        self._events.append(QueryFailed(qid, reason))


def _answers(request: Request, response: Message) -> bool:
    """Whether ``response`` is a legal answer to ``request`` (ERROR always is)."""
    if isinstance(response, Error):
        return True
    match request:
        case Ping():
            return isinstance(response, Pong)
        case FindNode():
            return isinstance(response, Nodes)
        case FindValue():
            return isinstance(response, Nodes | Value)
        case Store():
            return isinstance(response, Stored)
    return False
