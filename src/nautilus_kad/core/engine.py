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

import dataclasses
import logging
import math
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable

from .auth import Authenticator
from .bootstrap import Bootstrap, ProbeQuery
from .config import MAX_DATAGRAM, KadConfig
from .context import FLAG_CLIENT, FLAG_LEAVING, NodeContext
from .errors import (
    ValidationError,
)
from .events import (
    Event,
    LookupDone,
    PeerAdded,
    PeerRemoved,
)
from .gets import Gets
from .handoff import Scans
from .holdings import Holdings
from .identity import Identity
from .ids import NodeId, random_id_in_bucket
from .limits import MAX_PING_BYTES
from .lookup import AnyLookup, Candidate
from .lookups import LookupQuery, Lookups, nothing
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
from .put import Publisher, Puts
from .records import (
    Record,
    RecordKind,
    check_replace,
    for_transfer,
    record_expiry,
    validate_record,
)
from .replication import RepublishSchedule
from .replicator import Replicator
from .routing import RoutingTable
from .rpc import Queries, Requests
from .session import (
    SessionTable,
)
from .storage import MemoryStore, RecordStore
from .tokens import TOKEN_BYTES, TOKEN_REUSE, WriteTokens
from .transfer import Transfers
from .wire import Wire

__all__ = ["FLAG_CLIENT", "FLAG_LEAVING", "TOKEN_BYTES", "TOKEN_REUSE", "KadEngine"]

_log = logging.getLogger("nautilus_kad.engine")

_STRIKES = 4096

# Stats keys per message type, built once (an f-string with ``TYPE.name`` per datagram costs).
_RX_REQUEST_KEY = {t: f"rx.request.{t.name}" for t in MessageType}
_RX_RESPONSE_KEY = {t: f"rx.response.{t.name}" for t in MessageType}
_REQUEST_CLASSES = frozenset({Ping, FindNode, FindValue, Store})
"""The request message classes (``message.TYPE.is_request``, without an enum property)."""


# --- bookkeeping for what we are waiting on ---------------------------------------------


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
        # Looked up at each call, not bound now: the simulator's hostile nodes override
        # _closest_for on a subclass the engine's class is switched to at run time.
        closest_for = lambda t, r: self._closest_for(t, r)  # noqa: E731, PLW0108
        pending: dict[bytes, Pending] = {}
        self.wire = Wire(ctx, pending.get, closest_for)
        self.replays = self.wire.replays
        self.ingress = self.wire.ingress
        self.budget = self.wire.budget
        self.requests = Requests(
            ctx, self.wire, pending, self._on_soft_timeout, self._on_hard_timeout,
            self._on_grace_over,
        )  # fmt: skip
        self._pending = self.requests.pending
        self._queries = Queries(ctx)
        self._verifying: set[NodeId] = set()
        self._awaiting = self.requests.awaiting
        self.strikes: OrderedDict[NodeId, int] = OrderedDict()
        """Invalid values (bad signature, wrong key hash …) each peer served us, for the
        most recent offenders."""

        self.tokens = WriteTokens(ctx, now)
        self._next_refresh_check = now + self.config.refresh_check_interval
        self._next_expiry = now + self.config.expire_interval

        # --- durability ----------------------------------------------------------------
        schedule = RepublishSchedule()
        self.holdings = Holdings(
            ctx, lambda key, now: self.replicator.arm(key, now, now), schedule.forget
        )
        self._held = self.holdings.held
        self._peer_since: dict[NodeId, float] = {}
        """When each routing-table peer entered the table (handoff ranks holders by it)."""
        check = self.config.neighbour_check_interval
        self._next_neighbour_check = now + check * (0.5 + rng.random()) if check else math.inf
        self.lookups = Lookups(ctx, self._queries, self.requests, self._penalise)
        self.gets = Gets(ctx, self.lookups, self.requests, self.holdings)
        self.publisher = Publisher(ctx)
        self.puts = Puts(ctx, self.lookups, self.requests, self.holdings, self.publisher.superseded)
        self.publisher.attach(self.puts)
        self.bootstrapper = Bootstrap(ctx, self._queries, self.requests, self.lookups)
        self.transfers = Transfers(ctx, self._queries, self.requests, self.tokens)
        self.scans = Scans(ctx, self._held, schedule, self.transfers, lambda: self._peer_since)
        self.replicator = Replicator(ctx, schedule, self.holdings, self.lookups, self.transfers)
        self.holdings.load(now, lambda key, stored_at: self.replicator.loaded(key, stored_at, now))

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
        return min(
            self.tokens.next_rotation,
            self._next_refresh_check,
            self._next_expiry,
            self.replicator.schedule.next_deadline(),
            self.scans.wakeup,
            self._next_neighbour_check,
            self.requests.next_deadline(),
            self.publisher.next_deadline(),
        )

    @property
    def replication_backlog(self) -> int:
        """Replication STOREs queued or in flight, plus records still to be examined."""
        return self.transfers.backlog + len(self.scans)

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
        qid = self._queries.new_id()
        self._queries[qid] = ProbeQuery(qid, self._queries, self._ctx)
        if not self.requests.send(address, None, Ping(), now, qid):
            self._queries.fail(qid, "too many requests in flight")
        return qid

    def find_node_at(self, address: Address, target: NodeId, now: float) -> int:
        """One FIND_NODE to one address (no lookup): ends with :class:`NodesAnswered`."""
        qid = self._queries.new_id()
        self._queries[qid] = ProbeQuery(qid, self._queries, self._ctx)
        if not self.requests.send(address, None, FindNode(target), now, qid):
            self._queries.fail(qid, "too many requests in flight")
        return qid

    def find_node(self, target: NodeId, now: float, *, paths: int | None = None) -> int:
        """Iterative FIND_NODE: ends with :class:`LookupDone` (the k closest that answered).

        ``paths`` overrides :attr:`KadConfig.disjoint_paths` for this lookup."""
        return self.lookups.start(target, now, want_value=False, on_done=self._found, paths=paths)

    def lookup_state(self, query_id: int) -> AnyLookup | None:
        """The state machine of the running lookup or get ``query_id`` (None once it ended,
        or for other operations). For observation only (the simulator scores each disjoint
        path from it); the caller must not drive it. It stays readable after the operation
        ended if the caller kept it."""
        query = self._queries.get(query_id)
        return query.lookup if isinstance(query, LookupQuery) else None

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
        return self.gets.get(key, now, kind, paths, alpha)

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
            self.publisher.unpublish(record.key)
        return self.puts.start(record, cas, now, internal=False)

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
        put = self.puts.new(record)
        self.puts.store_on(put, None, targets, now)
        return put.query_id

    def publish_later(self, record: Record, due: float, base_ttl: int | None = None) -> None:
        """Remember ``record`` as ours and re-put it at ``due`` (then every
        ``publisher_republish_interval``). Drivers use it to restore published records after a
        restart; ``base_ttl`` is the lifetime each re-put grants from then on."""
        self.publisher.publish_later(record, due, base_ttl)

    def unpublish(self, key: NodeId) -> bool:
        """Stop republishing ``key`` (its copies then expire with their TTL)."""
        return self.publisher.unpublish(key)

    def published(self) -> list[tuple[Record, int]]:
        """The records this node republishes as their publisher, with their base TTL."""
        return self.publisher.published()

    def leave(self, now: float) -> int:
        """Hand every record on to the nodes that keep it once we are gone.

        For each record, a FIND_VALUE lookup that does not stop at the value finds the k
        closest other nodes and which of them hold it already; the others get a STORE. (Our
        routing table alone cannot say who the new k-th closest is: a node knows only the
        peers it has talked to.) Ends with :class:`LeaveDone` when every lookup finished and
        every STORE was answered or timed out; the driver bounds the wait
        (``leave_timeout``)."""
        qid = self._queries.new_id()
        self.scans.clear()
        self.replicator.leave(qid, now)
        return qid

    def bootstrap(self, seeds: Iterable[Address], now: float) -> int:
        """Join through known addresses: ping them, look up our own id, refresh farther
        buckets. Ends with :class:`BootstrapDone` or :class:`QueryFailed`."""
        return self.bootstrapper.start(seeds, now)

    def refresh(self, now: float) -> None:
        """Look up a random id in every bucket idle for ``refresh_interval``."""
        for index in self.table.buckets_to_refresh(now):
            target = random_id_in_bucket(self.node_id, index, self.rng)
            self.lookups.start(target, now, want_value=False, on_done=nothing)

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
        self.requests.run(now)
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
        if self.scans:
            self.scans.run(now)
        self.replicator.run(now)
        self.publisher.run(now)
        self.transfers.pump(now)

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
        pending = self.requests.match(envelope, message, address)
        if pending is None:
            return
        self.requests.forget(pending)
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
                self.gets.late_value(contact, message, now)
            return
        query.on_answer(pending, contact, message, rtt, departing, now)

    def _on_soft_timeout(self, pending: Pending, now: float) -> None:
        pending.slow = True
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is not None:
            query.on_slow(pending, now)

    def _on_grace_over(self, pending: Pending, now: float) -> None:
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is not None:
            query.on_grace_over(pending, now)

    def _on_hard_timeout(self, pending: Pending, now: float) -> None:
        self.requests.forget(pending)
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
        if query is not None:
            query.on_timeout(pending, now)

    def _found(self, query: LookupQuery, closest: list[Candidate], now: float) -> None:
        """A user's :meth:`find_node` ended."""
        if self.lookups.failed(query):
            return
        lookup = query.lookup
        self._events.append(
            LookupDone(
                query.query_id,
                lookup.target,
                tuple(c.contact for c in closest),
                lookup.hops,
                lookup.queries_sent,
            )
        )

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
        if self.requests.send(contact.address, contact.node_id, Ping(), now, None):
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
            self.scans.start(contact, True, now)

    def _peer_removed(self, contact: Contact, now: float) -> None:
        """A peer failed and left the routing table: the records it held with us need a
        prompt repair."""
        self._events.append(PeerRemoved(contact))
        self.tokens.forget(contact.node_id)
        self._peer_since.pop(contact.node_id, None)
        if len(self._held):
            self.scans.start(contact, False, now)

    # ======================================================================================
    # Durability: republish, handoff, repair, leave
    # ======================================================================================

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

    # ======================================================================================
    # Sending
    # ======================================================================================
