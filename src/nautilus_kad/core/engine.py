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

import logging
import random
from collections import Counter
from collections.abc import Iterable

from .auth import Authenticator
from .bootstrap import Bootstrap, ProbeQuery
from .config import KadConfig
from .context import FLAG_CLIENT, FLAG_LEAVING, NodeContext, Shared
from .errors import (
    ValidationError,
)
from .events import (
    Event,
    LookupDone,
)
from .fanout import StoreFanout
from .fifo import Fifo
from .gets import Gets
from .handoff import Scans
from .holdings import Holdings
from .identity import Identity
from .ids import NodeId, random_id_in_bucket
from .lookup import Candidate
from .lookup_disjoint import AnyLookup
from .lookups import LookupQuery, Lookups, nothing
from .messages import (
    Address,
    Contact,
    Dialback,
    Envelope,
    FindNode,
    FindValue,
    Message,
    MessageType,
    Nodes,
    Ping,
    Probe,
    ProbeRelay,
    Store,
    Value,
    new_contact,
)
from .natlink import NatLink
from .peers import Peers
from .pending import Pending
from .put import Publisher, Puts
from .records import (
    Record,
    RecordKind,
    check_replace,
    record_expiry,
    validate_record,
)
from .replication import RepublishSchedule
from .replicator import Replicator
from .routing import RoutingTable
from .rpc import Queries, Requests
from .serve import Responder
from .session_table import SessionTable
from .storage import MemoryStore, RecordStore
from .tokens import TOKEN_BYTES, TOKEN_REUSE, WriteTokens
from .traversal import CHANNEL_KINDS, TRAVERSAL_REQUESTS, Traversal
from .wire import Wire

__all__ = ["FLAG_CLIENT", "FLAG_LEAVING", "TOKEN_BYTES", "TOKEN_REUSE", "KadEngine"]

_log = logging.getLogger("nautilus_kad.engine")


# Stats keys per message type, built once (an f-string with ``TYPE.name`` per datagram costs).
_RX_REQUEST_KEY = {t: f"rx.request.{t.name}" for t in MessageType}
_RX_RESPONSE_KEY = {t: f"rx.response.{t.name}" for t in MessageType}
_REQUEST_CLASSES = frozenset({Ping, FindNode, FindValue, Store})
"""The request message classes (``message.TYPE.is_request``, without an enum property)."""
_NAT_REQUEST_CLASSES = frozenset({Dialback, ProbeRelay, Probe})  # core/natlink.py serves them
_TOKEN_ANSWERS = (Nodes, Value)
"""Answers carrying a write token (a tuple: ``Nodes | Value`` would build a union per use)."""
_DEFAULT_CONFIG = KadConfig()
"""The configuration of an engine given none: frozen constants, so every such engine of a
process reads the one instance (with its NAT and traversal parts: about 3 KiB per engine)."""


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
        config = config if config is not None else _DEFAULT_CONFIG
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
        ctx.auth.known = self.table.canonical
        self.stats: Counter[str] = ctx.stats
        self.rng = rng
        self._events: Fifo[Event] = ctx.events
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
        self._queries = Queries(ctx)

        self.tokens = WriteTokens(ctx, now)
        self._next_refresh_check = now + self.config.refresh_check_interval
        self._next_expiry = now + self.config.expire_interval

        # --- durability ----------------------------------------------------------------
        schedule = RepublishSchedule()
        self.holdings = Holdings(
            ctx, lambda key, now: self.replicator.arm(key, now, now), schedule.forget
        )
        self._held = self.holdings.held
        self.peers = Peers(
            ctx, now, self.requests, self.budget, self.tokens, self._held,
            lambda contact, now: self.scans.start(contact, True, now),
            lambda contact, now: self.scans.start(contact, False, now),
        )  # fmt: skip
        self.strikes = self.peers.strikes
        self.lookups = Lookups(ctx, self._queries, self.requests, self.peers.penalise)
        self.fanout = StoreFanout(ctx, self._queries, self.requests, self.tokens)
        self.gets = Gets(ctx, self.lookups, self.fanout, self.holdings)
        self.publisher = Publisher(ctx)
        self.puts = Puts(ctx, self.lookups, self.fanout, self.holdings, self.publisher.superseded)
        self.publisher.attach(self.puts)
        # The heaps behind two of get_timer's deadlines (lists never replaced): an empty one
        # (no record held, none published: most nodes of a simulation) costs no call.
        self._republish_heap = schedule._heap
        self._publish_heap = self.publisher._heap
        self.bootstrapper = Bootstrap(ctx, self._queries, self.requests, self.lookups)
        self.scans = Scans(ctx, self._held, schedule, self.fanout)
        self.replicator = Replicator(ctx, schedule, self.holdings, self.lookups, self.fanout)
        self.responder = Responder(
            ctx, self.wire, self.tokens, self.holdings, self.peers, closest_for
        )
        self.holdings.load(now, lambda key, stored_at: self.replicator.loaded(key, stored_at, now))
        self.natlink = NatLink(
            ctx, self.wire, self.requests, self._queries, now,
            client_mode=client_mode, verified=self.wire.address_verified,
        )  # fmt: skip
        self.nat = self.natlink.nat  # address votes, NAT class, mode, probe rounds
        self.traversal = Traversal(
            ctx, self.wire, self.requests, self._queries, self.lookups,
            is_client=lambda: self.natlink.is_client, nat_class=self.natlink.nat_class,
            external=self.natlink.external,
        )  # fmt: skip  # rendezvous, relay, connects and channels (core/traversal.py)

    # --- shared state that drivers and tests may replace (it lives in NodeContext) -------

    config = Shared[KadConfig]()
    auth = Shared[Authenticator]()
    """Signs and verifies datagrams (the simulator swaps in a cheap stand-in)."""
    sessions = Shared[SessionTable]()
    store = Shared[RecordStore]()
    flags = Shared[int]()
    """Sender flags of every datagram we send (FLAG_CLIENT, FLAG_LEAVING)."""
    address = Shared["Address | None"]()
    """Our bound address, set by the driver once known."""
    observed_address = Shared["Address | None"]()
    """Our address as the last peer to answer us saw it."""

    # ======================================================================================
    # Outputs
    # ======================================================================================

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued for the network since the last call."""
        out = self.wire.drain()
        self.natlink.sent(out)
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        """The next time :meth:`handle_timer` must run."""
        # The minimum of ten deadlines, compared one by one: the simulator asks after every
        # datagram, and builtin min() over ten arguments costs twice these comparisons.
        due = self.tokens.next_rotation
        if (t := self._next_refresh_check) < due:
            due = t
        if (t := self._next_expiry) < due:
            due = t
        if self._republish_heap and (t := self.replicator.schedule.next_deadline()) < due:
            due = t
        if (t := self.scans.wakeup) < due:
            due = t
        if (t := self.peers.next_neighbour_check) < due:
            due = t
        if (t := self.requests.next_deadline()) < due:
            due = t
        if (t := self.natlink.deadline) < due:
            due = t
        if (t := self.traversal.timer()) < due:
            due = t
        if self._publish_heap and (t := self.publisher.next_deadline()) < due:
            due = t
        return due

    @property
    def replication_backlog(self) -> int:
        """Replication STOREs queued or in flight, plus records still to be examined."""
        return self.fanout.backlog + len(self.scans)

    @property
    def stored_bytes(self) -> int:
        """What the records we hold count against ``max_store_bytes``."""
        return self.holdings.stored_bytes

    @property
    def pending_requests(self) -> int:
        return len(self.requests)

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
        out.update(self.natlink.counters())
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
        query_id = self.puts.new_id()
        self.puts.store_on(query_id, record, None, targets, now)
        return query_id

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
        self.natlink.received(address, now)  # a hole in our NAT stays open while used
        if len(data) > 1 and data[0] == 0xC1 and data[1] in CHANNEL_KINDS:
            self.traversal.datagram(data, address, now)  # a NAT traversal channel or circuit
            return
        envelope = self.wire.open(data, address, now)
        if envelope is None:
            return
        message = envelope.message
        kind = type(message)
        if kind in _REQUEST_CLASSES or kind in _NAT_REQUEST_CLASSES:
            if envelope.session is None and self.replays.replayed(data[-16:], now):
                # A session request's counter already guards it; a signed one has its
                # signature remembered for a while.
                self.stats["rx.dropped"] += 1
                self.stats["rx.dropped.replay"] += 1
                return
            serve = self.responder.answer if kind in _REQUEST_CLASSES else self.natlink.serve
            serve(envelope, message, address, now, len(data))  # type: ignore[arg-type]
        elif kind in TRAVERSAL_REQUESTS:
            self.traversal.serve(envelope, message, address, now, len(data))  # type: ignore[arg-type]
        else:
            self._handle_response(envelope, message, address, now)

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at ``now``: request timeouts and periodic upkeep."""
        self.requests.run(now)
        if self.natlink.deadline <= now:
            self.natlink.run(now)
        if self.traversal.timer() <= now:
            self.traversal.run(now)
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
            self.peers.prune()
        if now >= self.peers.next_neighbour_check:
            self.peers.check_neighbours(now)
        if self.scans:
            self.scans.run(now)
        self.replicator.run(now)
        self.publisher.run(now)
        self.fanout.pump(now)

    # ======================================================================================
    # Serving requests
    # ======================================================================================

    def _closest_for(self, target: NodeId, requester: NodeId) -> tuple[Contact, ...]:
        k = self.config.k
        contacts = self.table.closest(target, k + 1, include_stale=False)
        if contacts and requester ^ target > contacts[-1].node_id ^ target:
            return tuple(contacts[:k])  # the requester is farther than all of them
        return tuple([c for c in contacts if c.node_id != requester][:k])

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
        contact = new_contact(envelope.sender_id, address[0], address[1])
        rtt = max(0.0, now - pending.sent_at)
        departing = self.peers.on_answer(contact, envelope.flags, rtt, now)
        observed = getattr(message, "observed", None)
        if observed is not None:
            self.observed_address = observed
            self.natlink.answered(address, observed, now)
        if isinstance(message, _TOKEN_ANSWERS) and message.token:
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
        self.peers.on_timeout(pending, now)
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
                query.timeouts,
            )
        )

    # ======================================================================================
    # Sending
    # ======================================================================================
