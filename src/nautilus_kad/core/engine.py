"""KadEngine: the whole Kademlia protocol as a sans-I/O state machine.

The engine never touches a socket, a clock or global randomness (the h11 / aioquic pattern):

* inputs: :meth:`KadEngine.receive_datagram`, :meth:`KadEngine.handle_timer` and the commands
  (:meth:`~KadEngine.bootstrap`, :meth:`~KadEngine.find_node`, :meth:`~KadEngine.get`,
  :meth:`~KadEngine.put`, :meth:`~KadEngine.ping`), each taking the current time ``now``; the
  commands return a query id;
* outputs: :meth:`KadEngine.datagrams_to_send`, :meth:`KadEngine.get_timer` (the next deadline)
  and :meth:`KadEngine.next_event`.

The asyncio node and the simulator both drive this one class, so the simulator measures the
code the daemon runs.
"""

from __future__ import annotations

import heapq
import hmac
import logging
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .auth import Authenticator, ReplayFilter
from .codec import (
    EncodeError,
    decode_datagram,
    decode_session_datagram,
    encode_message,
    encode_session_message,
    pack_ip,
)
from .config import MAX_DATAGRAM, KadConfig
from .errors import (
    BadSignatureError,
    CasMismatchError,
    DecodeError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
)
from .events import (
    BootstrapDone,
    Event,
    GetDone,
    LookupDone,
    PeerAdded,
    PeerRemoved,
    PingDone,
    PutDone,
    QueryFailed,
)
from .identity import Identity
from .ids import NodeId, random_id_in_bucket
from .lookup import Candidate, Lookup
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
from .records import Record, RecordKind, check_replace, validate_record
from .routing import RoutingTable
from .session import (
    HEADER,
    HEADER_BYTES,
    KIND_DATA,
    KIND_UNKNOWN_SESSION,
    MIN_DATA_DATAGRAM,
    SESSION_MAGIC,
    HandshakeAccept,
    HandshakeOffer,
    Session,
    SessionTable,
    unknown_session_notice,
)
from .storage import MemoryStore, RecordStore

_log = logging.getLogger("nautilus_kad.engine")

TOKEN_BYTES = 8
_unpack_header = HEADER.unpack_from
_RECENT_SIGNED = 256
_STRIKES = 4096
_ANSWERED_PEERS = 4096
"""Addresses that answered us recently: the peers worth a session handshake."""
_DECLINED = 1024
_DECLINE_BACKOFF = 600.0
"""How long we stop offering sessions to a peer that answered an offer without accepting."""
FLAG_CLIENT = 0x01
"""Sender flag: the sender does not accept requests (client mode); keep it out of tables."""

# Stats keys per message type, built once (an f-string with ``TYPE.name`` per datagram costs).
_RX_REQUEST_KEY = {t: f"rx.request.{t.name}" for t in MessageType}
_RX_RESPONSE_KEY = {t: f"rx.response.{t.name}" for t in MessageType}
_TX_REQUEST_KEY = {t: f"tx.request.{t.name}" for t in MessageType}
_REQUEST_CLASSES = frozenset({Ping, FindNode, FindValue, Store})
"""The request message classes (``message.TYPE.is_request``, without an enum property)."""


# --- bookkeeping for what we are waiting on ---------------------------------------------


@dataclass(slots=True)
class _Pending:
    """A request we sent and whose answer we may still accept."""

    txid: bytes
    address: Address
    node_id: NodeId | None
    request: Request
    sent_at: float
    query_id: int | None
    slow: bool = False
    session: Session | None = None
    """The session the request went out in (None: signed)."""
    counter: int = 0
    offer: HandshakeOffer | None = None
    """The session offer the signed request carried."""
    retried: bool = False
    """Already re-sent once after an unknown-session notice."""


@dataclass(slots=True)
class _PingQuery:
    query_id: int
    internal: bool = False


@dataclass(slots=True)
class _LookupQuery:
    query_id: int
    lookup: Lookup
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


@dataclass(slots=True)
class _PutQuery:
    query_id: int
    record: Record
    queries: int
    waiting: set[bytes] = field(default_factory=set)
    acks: list[Contact] = field(default_factory=list)
    errors: list[tuple[ErrorCode, str]] = field(default_factory=list)


@dataclass(slots=True)
class _BootstrapQuery:
    query_id: int
    seeds_waiting: int
    lookups_waiting: int = 0
    phase: str = "seeds"
    """seeds (pinging known addresses) → self (own-id lookup) → refresh (farther buckets)."""


_Query = _PingQuery | _LookupQuery | _PutQuery | _BootstrapQuery


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
        self.config = config or KadConfig()
        self.identity = identity
        self.node_id: NodeId = identity.node_id
        self.auth = Authenticator(identity, self.config.verify_cache_size)
        self.sessions = SessionTable(self.config)
        self.replays = ReplayFilter(2 * self.config.token_rotation, self.config.max_replay_entries)
        self.table = RoutingTable(self.node_id, self.config, now)
        self.store: RecordStore = store if store is not None else MemoryStore()
        self.stats: Counter[str] = Counter()
        self.rng = rng
        self.flags = FLAG_CLIENT if client_mode else 0
        self.observed_address: Address | None = None
        """Our address as the last peer to answer us saw it."""
        self.address: Address | None = None
        """Our bound address, set by the driver once known."""

        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque()
        self._pending: dict[bytes, _Pending] = {}
        self._timers: list[tuple[float, int, bytes, bool]] = []
        self._timer_seq = 0
        self._queries: dict[int, _Query] = {}
        self._next_query_id = 1
        self._verifying: set[NodeId] = set()
        self._recent_signed: OrderedDict[NodeId, Record] = OrderedDict()
        """Newest signed records of recent gets: late answers older than these get fixed."""
        self.strikes: OrderedDict[NodeId, int] = OrderedDict()
        """Invalid values (bad signature, wrong key hash …) each peer served us, for the
        most recent offenders."""
        self._answered: dict[Address, int] = {}
        """How many answers each recent peer address sent us, least recent first: peers that
        keep answering are worth a session handshake."""
        self._declined: OrderedDict[Address, float] = OrderedDict()
        self._by_notice: dict[tuple[Address, int, int], bytes] = {}
        """(address, session id, counter) of requests sent in a session → their txid."""
        self._pad_to = -(-MAX_DATAGRAM // self.config.amplification_factor)
        """Signed FIND_* requests are padded to this size so that a peer that does not know
        us yet may answer them in full under the anti-amplification rule."""

        self._token_secret = rng.randbytes(16)
        self._previous_secret = self._token_secret
        self._last_token = ("", b"")
        """(requester IP, its token under the current secret) of the last FIND_* answer."""
        self._next_rotation = now + self.config.token_rotation
        self._next_refresh_check = now + self.config.refresh_check_interval
        self._next_expiry = now + self.config.expire_interval

    # ======================================================================================
    # Outputs
    # ======================================================================================

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Everything queued for the network since the last call."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float:
        """The next time :meth:`handle_timer` must run."""
        deadline = min(self._next_rotation, self._next_refresh_check, self._next_expiry)
        timers = self._timers
        pending = self._pending
        # Timers of requests already answered would only wake the driver for nothing
        # (handle_timer skips them): drop them from the top of the heap first.
        while timers and timers[0][2] not in pending:
            heapq.heappop(timers)
        if timers:
            deadline = min(deadline, timers[0][0])
        return deadline

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

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

    def find_node(self, target: NodeId, now: float) -> int:
        """Iterative FIND_NODE: ends with :class:`LookupDone` (the k closest that answered)."""
        return self._start_lookup(target, now, want_value=False)

    def get(self, key: NodeId, now: float, *, kind: RecordKind | None = None) -> int:
        """Iterative FIND_VALUE: ends with :class:`GetDone` (``record`` None when not found).

        ``kind`` restricts the answer to one record kind. A get of a SIGNED record does not
        stop at the first value: it collects ``signed_get_quorum`` valid answers among the
        closest nodes, returns the highest sequence number and writes it back to the replicas
        that served an older one. Invalid values count against the peer that sent them.
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
            )
        if local is not None and (kind is None or local.record.kind is kind):
            self._events.append(GetDone(qid, key, local.record, 0, 0))
            return qid
        return self._start_lookup(target=key, now=now, want_value=True, qid=qid, kind=kind)

    def put(self, record: Record, now: float, *, cas: int | None = None) -> int:
        """Find the k closest to ``record.key`` and STORE on them: ends with :class:`PutDone`.

        ``cas`` (signed records) is the sequence number the writer expects to replace: storers
        holding a newer one refuse with CAS_MISMATCH. Raises :class:`ValidationError` at once
        for a record no peer would accept.
        """
        validate_record(record, self.config)
        if cas is not None:
            check_replace(None, record, cas)  # the argument rules (signed, seq > cas)
        qid = self._start_lookup(record.key, now, want_value=False, put_record=record, put_cas=cas)
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
        """Handle one datagram from ``address``. Invalid input is counted and dropped."""
        self.stats["rx.datagrams"] += 1
        self.stats["rx.bytes"] += len(data)
        try:
            if data and data[0] == SESSION_MAGIC:
                opened = self._open_session_datagram(data, address, now)
                if opened is None:
                    return
                envelope = opened
            else:
                envelope = decode_datagram(data, self.auth)
        except DecodeError as exc:
            self.stats["rx.dropped"] += 1
            self.stats[f"rx.dropped.{exc.reason}"] += 1
            return
        if envelope.sender_id == self.node_id:
            self.stats["rx.dropped"] += 1
            self.stats["rx.dropped.self"] += 1
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

    def _open_session_datagram(self, data: bytes, address: Address, now: float) -> Envelope | None:
        """Authenticate a session datagram; handle an unknown-session notice (None)."""
        size = len(data)
        if size < HEADER_BYTES or size > MAX_DATAGRAM:
            raise DecodeError("undersize" if size < HEADER_BYTES else "oversize")
        _, kind, sid, counter = _unpack_header(data)
        if kind == KIND_UNKNOWN_SESSION:
            if len(data) != HEADER_BYTES:
                raise DecodeError("session.schema")
            self._on_unknown_session(sid, counter, address, now)
            return None
        if kind != KIND_DATA:
            raise DecodeError("session.schema")
        session = self.sessions.receive(sid, address, now)
        if session is None:
            if len(data) >= MIN_DATA_DATAGRAM:
                # Smaller than what arrived: nothing to amplify. The sender will handshake anew.
                self._outbox.append((unknown_session_notice(sid, counter), address))
                self.stats["tx.session_notices"] += 1
            raise DecodeError("session.unknown")
        envelope = decode_session_datagram(data, session, counter, now)
        self.stats["rx.session"] += 1
        return envelope

    def _on_unknown_session(self, sid: int, counter: int, address: Address, now: float) -> None:
        """A peer says it does not know the session our request went out in: forget the
        session and send the request again, signed and with a fresh offer (once)."""
        txid = self._by_notice.pop((address, sid, counter), None)
        pending = self._pending.get(txid) if txid is not None else None
        if pending is None or pending.session is None or pending.retried:
            self.stats["rx.dropped"] += 1
            self.stats["rx.dropped.session.notice"] += 1
            return
        self.stats["session.lost_by_peer"] += 1
        self.sessions.remove(pending.session)
        pending.retried = True
        pending.session = None
        self._transmit_request(pending, now, recover=True)

    def handle_timer(self, now: float) -> None:
        """Run everything that is due at ``now``: request timeouts and periodic upkeep."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, txid, soft = heapq.heappop(timers)
            pending = self._pending.get(txid)
            if pending is None:
                continue
            if soft:
                self._on_soft_timeout(pending, now)
            else:
                self._on_hard_timeout(pending, now)
        if now >= self._next_rotation:
            self._previous_secret = self._token_secret
            self._token_secret = self.rng.randbytes(16)
            self._last_token = ("", b"")
            self._next_rotation = now + self.config.token_rotation
        if now >= self._next_expiry:
            expired = self.store.expire(now)
            self.stats["store.expired"] += expired
            self.stats["session.expired"] += self.sessions.expire(now)
            cutoff = now - _DECLINE_BACKOFF
            while self._declined and next(iter(self._declined.values())) < cutoff:
                self._declined.popitem(last=False)
            self._next_expiry = now + self.config.expire_interval
        if now >= self._next_refresh_check:
            self._next_refresh_check = now + self.config.refresh_check_interval
            self.refresh(now)

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
        entry = self.table.get(sender)
        if entry is not None and entry.contact.address == address:
            entry.last_seen = now
        elif entry is None and not envelope.flags & FLAG_CLIENT:
            self._maybe_verify(Contact(sender, address[0], address[1]), now)

        response: Message
        match request:
            case Ping():
                response = Pong(address)
            case FindNode(target=target):
                token = self._token_for(address)
                response = Nodes(address, token, self._closest_for(target, sender))
            case FindValue(key=key):
                token = self._token_for(address)
                stored = self.store.get(key, now)
                if stored is not None:
                    response = Value(address, token, stored.record)
                else:
                    response = Nodes(address, token, self._closest_for(key, sender))
            case Store(record=record, token=token, expected_seq=expected_seq):
                response = self._handle_store(record, token, expected_seq, address, now)
        self._respond(envelope, response, address, now, request_size)

    def _respond(
        self,
        envelope: Envelope,
        response: Message,
        address: Address,
        now: float,
        request_size: int,
    ) -> None:
        """Answer in the framing the request came in: its session, or signed (accepting a
        session offer if it carried one). A signed answer to a source whose address nothing
        has verified is at most ``amplification_factor`` times the request's size."""
        session = envelope.session
        if session is not None:
            self._queue(
                encode_session_message(response, envelope.txid, session, self.flags), address
            )
            return
        accept: HandshakeAccept | None = None
        new_session: Session | None = None
        offer = envelope.handshake
        if isinstance(offer, HandshakeOffer) and self.config.sessions:
            accepted = self.sessions.accept(
                offer,
                peer_id=envelope.sender_id,
                peer_key=envelope.sender_key,
                address=address,
                own_id=self.node_id,
                auth=self.auth,
                rng=self.rng,
                now=now,
            )
            if accepted is not None:
                accept, new_session = accepted
        limit = request_size * self.config.amplification_factor
        if limit < MAX_DATAGRAM and self._address_verified(envelope.sender_id, address, now):
            limit = MAX_DATAGRAM
        data = self._encode_within(response, envelope.txid, accept, limit)
        if data is None and accept is not None:
            # No room for the accept (a maximal VALUE): answer now, agree a session later.
            accept = new_session = None
            data = self._encode_within(response, envelope.txid, None, limit)
        if data is None and isinstance(response, Value):
            # Too large for what the requester sent (it did not pad): it gets the closest
            # nodes instead and may ask again, padded.
            self.stats["tx.value_withheld"] += 1
            nodes = Nodes(
                response.observed,
                response.token,
                self._closest_for(response.record.key, envelope.sender_id),
            )
            data = self._encode_within(nodes, envelope.txid, None, limit)
        if data is None:
            self.stats["tx.refused.amplification"] += 1
            return
        if new_session is not None:
            self.sessions.add(new_session)
            self.stats["session.accepted"] += 1
        self._queue(data, address)

    def _encode_within(
        self, response: Message, txid: bytes, accept: HandshakeAccept | None, limit: int
    ) -> bytes | None:
        """A signed answer of at most ``limit`` bytes (NODES trimmed to fit), or None."""
        try:
            return encode_message(
                response, txid, self.auth, self.flags, handshake=accept, max_size=limit
            )
        except EncodeError:
            return None

    def _address_verified(self, node_id: NodeId, address: Address, now: float) -> bool:
        """Whether ``node_id`` is known to be reachable at ``address`` (it answered us
        there, or talks to us in a session bound to it): no need to limit our answer."""
        entry = self.table.get(node_id)
        if entry is not None and entry.contact.address == address:
            return True
        session = self.sessions.for_send(address, node_id, now)
        return session is not None and session.confirmed

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
        if not self._token_valid(token, address):
            self.stats["store.rejected.token"] += 1
            return Error(address, ErrorCode.BAD_TOKEN, "missing or expired write token")
        code, text = self._store_record(record, expected_seq, now, validate=True)
        if code is None:
            return Stored(address)
        return Error(address, code, text)

    def _store_record(
        self, record: Record, expected_seq: int | None, now: float, *, validate: bool
    ) -> tuple[ErrorCode | None, str]:
        """Apply the storer's rules (validity, conflicts, compare-and-swap, quota) and keep
        ``record`` if they allow it. Returns ``(None, "")`` or the refusal's code and text."""
        try:
            if validate:
                validate_record(record, self.config)
            existing = self.store.get(record.key, now)
            replace = check_replace(
                existing.record if existing is not None else None, record, expected_seq
            )
        except BadSignatureError as exc:
            self.stats["store.rejected.signature"] += 1
            return ErrorCode.BAD_SIGNATURE, str(exc)
        except ValidationError as exc:
            self.stats["store.rejected.invalid"] += 1
            return ErrorCode.INVALID_RECORD, str(exc)
        except CasMismatchError as exc:
            self.stats["store.rejected.cas"] += 1
            return ErrorCode.CAS_MISMATCH, str(exc)
        except StaleSequenceError as exc:
            self.stats["store.rejected.stale"] += 1
            return ErrorCode.STALE_SEQUENCE, str(exc)
        except RecordConflictError as exc:
            self.stats["store.rejected.stale"] += 1
            return ErrorCode.STALE_RECORD, str(exc)
        if existing is not None and not replace:
            existing.stored_at = now
            return None, ""
        if existing is None and len(self.store) >= self.config.max_records:
            self.stats["store.rejected.full"] += 1
            return ErrorCode.STORE_FULL, "store is full"
        ttl = min(float(record.ttl), self.config.max_record_ttl)
        self.store.put(record, now, now + ttl)
        self.stats["store.accepted"] += 1
        return None, ""

    # --- write tokens (BEP 5) ------------------------------------------------------------

    def _token_for(self, address: Address, secret: bytes | None = None) -> bytes:
        if secret is None:
            # Every FIND_* answer carries one, and a requester often asks several in a row:
            # remember the last one (no more, a table per requester would cost memory).
            last_ip, token = self._last_token
            if last_ip != address[0]:
                token = self._token_for(address, self._token_secret)
                self._last_token = (address[0], token)
            return token
        return hmac.digest(secret, pack_ip(address[0]), "sha256")[:TOKEN_BYTES]

    def _token_valid(self, token: bytes, address: Address) -> bool:
        if len(token) != TOKEN_BYTES:
            return False
        return hmac.compare_digest(token, self._token_for(address)) or hmac.compare_digest(
            token, self._token_for(address, self._previous_secret)
        )

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
        answered = self._answered
        count = answered.pop(address, 0)
        if not count and len(answered) >= _ANSWERED_PEERS:
            del answered[next(iter(answered))]
        answered[address] = count + 1  # most recent last
        if pending.offer is not None:
            self._finish_handshake(pending.offer, envelope, address, now)
        self.stats[_RX_RESPONSE_KEY[message.TYPE]] += 1
        contact = Contact(envelope.sender_id, address[0], address[1])
        rtt = max(0.0, now - pending.sent_at)
        if not envelope.flags & FLAG_CLIENT:
            added, to_ping = self.table.observe(contact, now)
            if added:
                self._peer_added(contact)
            if to_ping is not None:
                self._check_liveness(to_ping, now)
        self.table.record_rtt(contact.node_id, rtt)
        self._verifying.discard(contact.node_id)
        observed = getattr(message, "observed", None)
        if observed is not None:
            self.observed_address = observed

        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if query is None:
            if isinstance(message, Value):
                self._late_value(contact, message, now)
            return
        match query:
            case _PingQuery():
                del self._queries[query.query_id]
                if not query.internal:
                    self._events.append(PingDone(query.query_id, contact, rtt))
            case _BootstrapQuery():
                query.seeds_waiting -= 1
                self._bootstrap_progress(query, now)
            case _LookupQuery():
                self._lookup_response(query, contact, message, now)
            case _PutQuery():
                query.waiting.discard(envelope.txid)
                if isinstance(message, Stored):
                    query.acks.append(contact)
                else:
                    self.stats["put.store_refused"] += 1
                    if isinstance(message, Error):
                        query.errors.append((message.code, message.message))
                self._put_progress(query)

    def _on_soft_timeout(self, pending: _Pending, now: float) -> None:
        pending.slow = True
        query = self._queries.get(pending.query_id) if pending.query_id is not None else None
        if isinstance(query, _LookupQuery) and pending.node_id is not None:
            query.lookup.on_soft_timeout(pending.node_id)
            self._advance(query, now)
        elif isinstance(query, _PutQuery):
            # A put does not wait on a slow replica; a late STORED still counts if it comes
            # before the put is reported.
            query.waiting.discard(pending.txid)
            self._put_progress(query)

    def _on_hard_timeout(self, pending: _Pending, now: float) -> None:
        self._forget_pending(pending)
        if pending.offer is not None:
            self.sessions.cancel_offer(pending.offer)
        self.stats["tx.timeouts"] += 1
        if pending.node_id is not None:
            self._verifying.discard(pending.node_id)
            removed = self.table.record_failure(pending.node_id)
            if removed is not None:
                self._events.append(PeerRemoved(removed))
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
                    query.lookup.on_failure(pending.node_id)
                self._advance(query, now)
            case _PutQuery():
                query.waiting.discard(pending.txid)
                self._put_progress(query)

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
    ) -> int:
        if qid is None:
            qid = self._new_query_id()
        seeds = self.table.closest(target, self.config.k)
        self.table.touch(target, now)
        lookup = Lookup(target, self.node_id, self.config.k, self.config.alpha, seeds)
        query = _LookupQuery(
            qid,
            lookup,
            want_value,
            internal,
            put_record=put_record,
            put_cas=put_cas,
            bootstrap=bootstrap,
            kind=kind,
            quorum=quorum,
            local=local,
        )
        self._queries[qid] = query
        self.stats["lookups.started"] += 1
        self._advance(query, now)
        return qid

    def _lookup_response(
        self, query: _LookupQuery, contact: Contact, message: Message, now: float
    ) -> None:
        lookup = query.lookup
        if isinstance(message, Nodes):
            # The decoder bounds a NODES answer at 32 contacts; we use at most k of them.
            lookup.on_response(contact.node_id, message.contacts[: self.config.k], message.token)
        elif isinstance(message, Value):
            record = message.record
            valid = record.key == lookup.target
            if valid:
                try:
                    validate_record(record, self.config)
                except ValidationError:
                    valid = False
            if not valid:
                # Honest storers validate what they keep: an invalid value is the peer's fault.
                self.stats["get.invalid_value"] += 1
                self._penalise(contact.node_id)
                query.holders.add(contact.node_id)  # and no copy of ours goes to it either
                lookup.on_response(contact.node_id, (), message.token)
            elif query.kind is not None and record.kind is not query.kind:
                self.stats["get.wrong_kind"] += 1
                lookup.on_response(contact.node_id, (), message.token)
            else:
                lookup.on_response(contact.node_id, (), message.token)
                query.holders.add(contact.node_id)
                query.answers.append((contact, record, message.token))
                if query.found is None or record.supersedes(query.found):
                    query.found = record
                if len(query.answers) >= query.quorum:
                    lookup.finish()
        else:  # an ERROR answer: the peer is alive but useless for this lookup
            lookup.on_failure(contact.node_id)
        self._advance(query, now)

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
                    lookup.on_failure(contact.node_id)
                    query.overloaded = True
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
        if query.internal:
            return
        if query.local is not None and (query.found is None or query.local.supersedes(query.found)):
            query.found = query.local
        if query.found is None and (
            query.overloaded or (lookup.responses == 0 and lookup.queries_sent > 0)
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
        if query.put_record is not None:
            self._start_stores(query, closest, now)
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
            self._store_record(best, None, now, validate=False)
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
        put = _PutQuery(query.query_id, record, query.lookup.queries_sent)
        self._queries[put.query_id] = put
        targets = [cand for cand in closest if cand.token]
        # We store too when we are among the k closest (in a small network we may be one of
        # the nodes that should hold the record) unless we are a client that will not serve.
        own_distance = self.node_id ^ record.key
        if not self.flags & FLAG_CLIENT and (
            len(targets) < self.config.k or own_distance < targets[-1].distance
        ):
            own = Contact(self.node_id, *(self.address or self.observed_address or ("0.0.0.0", 1)))
            code, text = self._store_record(record, query.put_cas, now, validate=False)
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
                Store(record, cand.token, query.put_cas),
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
        if contact.node_id in self._verifying:
            return
        if len(self._verifying) >= self.config.max_pending_verifications:
            return
        if not self.table.has_room_for(contact.node_id):
            return
        self._check_liveness(contact, now)

    def _check_liveness(self, contact: Contact, now: float) -> None:
        """PING ``contact`` unless a check is already under way; the answer (or its
        absence) updates the routing table."""
        if contact.node_id in self._verifying:
            return
        if self._send_request(contact.address, contact.node_id, Ping(), now, None):
            self._verifying.add(contact.node_id)

    def _peer_added(self, contact: Contact) -> None:
        self._events.append(PeerAdded(contact))
        if _log.isEnabledFor(logging.INFO):
            _log.info("peer %s joined the routing table", contact)

    # ======================================================================================
    # Sending
    # ======================================================================================

    def _queue(self, data: bytes, address: Address) -> None:
        self._outbox.append((data, address))
        self.stats["tx.datagrams"] += 1
        self.stats["tx.bytes"] += len(data)

    def _transmit_request(self, pending: _Pending, now: float, *, recover: bool = False) -> None:
        """Send (or re-send) a pending request: in a live session with its peer if there is
        one, else signed, offering a handshake to peers we talk to repeatedly."""
        address = pending.address
        request = pending.request
        session = None
        if self.config.sessions and not recover:
            session = self.sessions.for_send(address, pending.node_id, now)
        if session is not None:
            data = encode_session_message(request, pending.txid, session, self.flags)
            pending.session = session
            pending.counter = session.send_counter
            self._by_notice[(address, session.remote_sid, session.send_counter)] = pending.txid
            self.stats["tx.session"] += 1
        else:
            offer = None
            if self._should_offer(address, pending.node_id, request, recover):
                offer = self.sessions.make_offer(address, self.auth, self.rng, now)
                pending.offer = offer
                self.stats["session.offered"] += 1
            pad = self._pad_to if isinstance(request, FindNode | FindValue) else 0
            data = encode_message(
                request, pending.txid, self.auth, self.flags, handshake=offer, pad_to=pad
            )
            self.stats["tx.signed"] += 1
        self._queue(data, address)

    def _should_offer(
        self, address: Address, node_id: NodeId | None, request: Request, recover: bool
    ) -> bool:
        """Offer a session to peers that keep answering us (``session_after_answers`` times
        already), or that lost our session: a key agreement costs about one signed exchange,
        so it pays only with a peer we talk to again and again."""
        if not self.config.sessions or isinstance(request, Store):
            return False  # a maximal STORE has no room for an offer
        if not recover and self._answered.get(address, 0) < self.config.session_after_answers:
            return False
        return not self.sessions.offering(address) and address not in self._declined

    def _finish_handshake(
        self, offer: HandshakeOffer, envelope: Envelope, address: Address, now: float
    ) -> None:
        accept = envelope.handshake
        observed = getattr(envelope.message, "observed", None)
        if isinstance(accept, HandshakeAccept) and envelope.session is None and observed:
            session = self.sessions.complete(
                offer,
                accept,
                peer_id=envelope.sender_id,
                peer_key=envelope.sender_key,
                own_id=self.node_id,
                observed=observed,
                auth=self.auth,
                now=now,
            )
            if session is not None:
                self.stats["session.established"] += 1
                return
        self.sessions.cancel_offer(offer)
        self.stats["session.declined"] += 1
        self._declined[address] = now
        self._declined.move_to_end(address)
        if len(self._declined) > _DECLINED:
            self._declined.popitem(last=False)

    def _forget_pending(self, pending: _Pending) -> None:
        del self._pending[pending.txid]
        if pending.session is not None:
            self._by_notice.pop(
                (pending.address, pending.session.remote_sid, pending.counter), None
            )

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
        txid = self.rng.randbytes(8)
        while txid in self._pending:
            txid = self.rng.randbytes(8)
        pending = _Pending(txid, address, node_id, request, now, query_id)
        self._pending[txid] = pending
        self.stats[_TX_REQUEST_KEY[request.TYPE]] += 1
        self._transmit_request(pending, now)
        if node_id is not None:
            soft = self.table.soft_timeout(node_id)
        else:
            soft = self.config.max_soft_timeout
        self._push_timer(now + soft, txid, True)
        self._push_timer(now + self.config.request_timeout, txid, False)
        return txid

    def _push_timer(self, deadline: float, txid: bytes, soft: bool) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, txid, soft))

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
