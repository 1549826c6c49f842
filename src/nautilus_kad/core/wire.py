"""The wire: bytes in, envelopes out, and back.

Everything between a UDP datagram and a decoded, authenticated message lives here, in both
directions:

* in: the size check, the per-source-IP rate limit (core/ratelimit.py), the strict decode with
  its signature or session AEAD, the unknown-session notice, dropping our own datagrams, and
  counting every drop by reason;
* out: framing a request in its peer's session or signed (offering a handshake to a peer that
  keeps answering), padding signed FIND requests, re-sending a slow request as a fresh
  datagram, answering in the framing a request came in, and the anti-amplification rule for
  answers to unverified addresses (core/amplification.py);
* what the wire learns from answers: which addresses answered us (worth a session), which
  declined a session, and which (address, session, counter) carried which request.

Upward it knows two callables given at construction: ``pending_of(txid)`` (the request an
unknown-session notice names, owned by the rpc layer) and ``closest_for(target, requester)``
(the contacts a withheld VALUE is replaced by; the simulator's hostile nodes override it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from .amplification import AmplificationBudget
from .auth import ReplayFilter
from .codec import (
    EncodeError,
    decode_datagram,
    decode_session_datagram,
    encode_message,
    encode_session_message,
)
from .config import MAX_DATAGRAM
from .context import NodeContext
from .errors import DecodeError
from .ids import NodeId
from .limits import MAX_PING_BYTES
from .messages import (
    Address,
    AnyRequest,
    Contact,
    Envelope,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Store,
    Value,
)
from .pending import Pending
from .ratelimit import SourceRateLimiter
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
    unknown_session_notice,
)

_unpack_header = HEADER.unpack_from
_FINDS = (FindNode, FindValue)
"""The padded requests (a tuple: ``FindNode | FindValue`` would build a union per use)."""
_ANSWERED_PEERS = 4096
"""Addresses that answered us recently: the peers worth a session handshake."""
_DECLINED = 1024
_DECLINE_BACKOFF = 600.0
"""How long we stop offering sessions to a peer that answered an offer without accepting."""


class Wire:
    """Framing, authentication and the datagram-level defences of one node."""

    def __init__(
        self,
        ctx: NodeContext,
        pending_of: Callable[[bytes], Pending | None],
        closest_for: Callable[[NodeId, NodeId], tuple[Contact, ...]],
    ) -> None:
        self._ctx = ctx
        self._pending_of = pending_of
        self._closest_for = closest_for
        config = ctx.config
        self.replays = ReplayFilter(2 * config.token_rotation, config.max_replay_entries)
        self.ingress = SourceRateLimiter(config)
        """Per-source-IP token buckets: checked before any decoding (see core/ratelimit.py)."""
        self.budget = AmplificationBudget(
            config.amplification_factor, config.amplification_addresses
        )
        """Bytes we may still send to each unverified address (core/amplification.py)."""
        self._outbox: list[tuple[bytes, Address]] = []
        self.now = -math.inf
        """The time of the last datagram framed (the NAT layer dates what we sent by it)."""
        self._answered: dict[Address, int] = {}
        """How many answers each recent peer address sent us, least recent first: peers that
        keep answering are worth a session handshake."""
        self._declined: OrderedDict[Address, float] = OrderedDict()
        self._by_notice: dict[tuple[Address, int, int], bytes] = {}
        """(address, session id, counter) of requests sent in a session → their txid."""
        factor = config.amplification_factor
        self.pad_to = min(MAX_DATAGRAM, -(-(MAX_DATAGRAM + MAX_PING_BYTES) // factor))
        """Signed FIND_* requests are padded to this size so that a peer that does not know
        us yet may answer them in full under the anti-amplification rule, and still afford
        the PING that verifies our address."""

    def drain(self) -> list[tuple[bytes, Address]]:
        """Everything queued for the network since the last call."""
        out, self._outbox = self._outbox, []
        return out

    # --- in ------------------------------------------------------------------------------

    def open(self, data: bytes, address: Address, now: float) -> Envelope | None:
        """Authenticate one datagram from ``address``: its envelope, or None when it was
        dropped (and counted) or was an unknown-session notice (handled here)."""
        stats = self._ctx.stats
        stats["rx.datagrams"] += 1
        stats["rx.bytes"] += len(data)
        if len(data) > MAX_DATAGRAM:
            stats["rx.dropped"] += 1
            stats["rx.dropped.oversize"] += 1
            return None
        refused = self.ingress.admit(address[0], now)
        if refused is not None:
            stats["rx.dropped"] += 1
            stats["rx.dropped." + refused] += 1
            return None
        try:
            if data and data[0] == SESSION_MAGIC:
                opened = self._open_session(data, address, now)
                if opened is None:
                    return None
                envelope = opened
            else:
                envelope = decode_datagram(data, self._ctx.auth)
        except DecodeError as exc:
            self._ctx.stats["rx.dropped"] += 1
            self._ctx.stats[f"rx.dropped.{exc.reason}"] += 1
            return None
        if envelope.sender_id == self._ctx.node_id:
            self._ctx.stats["rx.dropped"] += 1
            self._ctx.stats["rx.dropped.self"] += 1
            return None
        return envelope

    def _open_session(self, data: bytes, address: Address, now: float) -> Envelope | None:
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
        session = self._ctx.sessions.receive(sid, address, now)
        if session is None:
            if len(data) >= MIN_DATA_DATAGRAM:
                # Smaller than what arrived: nothing to amplify. The sender will handshake anew.
                self._outbox.append((unknown_session_notice(sid, counter), address))
                self._ctx.stats["tx.session_notices"] += 1
            raise DecodeError("session.unknown")
        envelope = decode_session_datagram(data, session, counter, now, self._ctx.auth.contacts)
        self._ctx.stats["rx.session"] += 1
        return envelope

    def _on_unknown_session(self, sid: int, counter: int, address: Address, now: float) -> None:
        """A peer says it does not know the session our request went out in: forget the
        session and send the request again, signed and with a fresh offer (once)."""
        txid = self._by_notice.pop((address, sid, counter), None)
        pending = self._pending_of(txid) if txid is not None else None
        if pending is None or pending.session is None or pending.retried:
            self._ctx.stats["rx.dropped"] += 1
            self._ctx.stats["rx.dropped.session.notice"] += 1
            return
        self._ctx.stats["session.lost_by_peer"] += 1
        self._ctx.sessions.remove(pending.session)
        pending.retried = True
        pending.session = None
        self.transmit(pending, now, recover=True)

    def answered_from(self, address: Address) -> None:
        """A peer answered a request of ours from ``address``: it echoed our random txid,
        so it receives there; and one more answer makes it worth a session."""
        self.budget.verified(address)
        answered = self._answered
        count = answered.pop(address, 0)
        if not count and len(answered) >= _ANSWERED_PEERS:
            del answered[next(iter(answered))]
        answered[address] = count + 1  # most recent last

    def forget(self, pending: Pending) -> None:
        """``pending`` is answered or abandoned: a notice naming it means nothing now."""
        if pending.session is not None:
            self._by_notice.pop(
                (pending.address, pending.session.remote_sid, pending.counter), None
            )

    def expire(self, now: float) -> None:
        """Periodic upkeep: idle sessions, and old session refusals."""
        self._ctx.stats["session.expired"] += self._ctx.sessions.expire(now)
        declined = self._declined
        cutoff = now - _DECLINE_BACKOFF
        while declined and next(iter(declined.values())) < cutoff:
            declined.popitem(last=False)

    # --- out -----------------------------------------------------------------------------

    def respond(
        self,
        envelope: Envelope,
        response: Message,
        address: Address,
        now: float,
        request_size: int,
        verified: bool = True,
    ) -> None:
        """Answer in the framing the request came in: its session, or signed (accepting a
        session offer if it carried one). A signed answer to a source whose address nothing
        has verified is at most ``amplification_factor`` times the request's size, and at
        most what the address's byte budget has left."""
        self.now = now
        session = envelope.session
        if session is not None:
            self.queue(
                encode_session_message(
                    response,
                    envelope.txid,
                    session,
                    self._ctx.flags,
                    memo=self._ctx.auth.contacts,
                ),
                address,
            )
            return
        accept: HandshakeAccept | None = None
        new_session: Session | None = None
        offer = envelope.handshake
        if isinstance(offer, HandshakeOffer) and self._ctx.config.sessions:
            accepted = self._ctx.sessions.accept(
                offer,
                peer_id=envelope.sender_id,
                peer_key=envelope.sender_key,
                address=address,
                own_id=self._ctx.node_id,
                auth=self._ctx.auth,
                rng=self._ctx.rng,
                now=now,
            )
            if accepted is not None:
                accept, new_session = accepted
        limit = MAX_DATAGRAM
        if not verified:
            limit = min(
                limit,
                request_size * self._ctx.config.amplification_factor,
                self.budget.allowance(address),
            )
        data = self._encode_within(response, envelope.txid, accept, limit)
        if data is None and accept is not None:
            # No room for the accept (a maximal VALUE): answer now, agree a session later.
            accept = new_session = None
            data = self._encode_within(response, envelope.txid, None, limit)
        if data is None and isinstance(response, Value):
            # Too large for what the requester sent (it did not pad): it gets the closest
            # nodes instead and may ask again, padded.
            self._ctx.stats["tx.value_withheld"] += 1
            nodes = Nodes(
                response.observed,
                response.token,
                self._closest_for(response.record.key, envelope.sender_id),
            )
            data = self._encode_within(nodes, envelope.txid, None, limit)
        if data is None:
            self._ctx.stats["tx.refused.amplification"] += 1
            return
        if new_session is not None:
            self._ctx.sessions.add(new_session)
            self._ctx.stats["session.accepted"] += 1
        self.queue(data, address)

    def _encode_within(
        self, response: Message, txid: bytes, accept: HandshakeAccept | None, limit: int
    ) -> bytes | None:
        """A signed answer of at most ``limit`` bytes (NODES trimmed to fit), or None."""
        try:
            return encode_message(
                response, txid, self._ctx.auth, self._ctx.flags, handshake=accept, max_size=limit
            )
        except EncodeError:
            return None

    def address_verified(self, node_id: NodeId, address: Address, now: float) -> bool:
        """Whether ``node_id`` is known to be reachable at ``address`` (it answered a request
        of ours there, or talks to us in a session bound to it): no need to limit our
        answer."""
        entry = self._ctx.table.get(node_id)
        if (entry is not None and entry.contact.address == address) or address in self._answered:
            self.budget.verified(address)
            return True
        session = self._ctx.sessions.for_send(address, node_id, now)
        if session is not None and session.confirmed:
            self.budget.verified(address)
            return True
        return False

    def queue(self, data: bytes, address: Address) -> None:
        self.budget.spend(address, len(data))
        self._outbox.append((data, address))
        self._ctx.stats["tx.datagrams"] += 1
        self._ctx.stats["tx.bytes"] += len(data)

    def transmit(self, pending: Pending, now: float, *, recover: bool = False) -> None:
        """Send (or re-send) a pending request: in a live session with its peer if there is
        one, else signed, offering a handshake to peers we talk to repeatedly."""
        self.now = now
        address = pending.address
        request = pending.request
        session = None
        if self._ctx.config.sessions and not recover and not pending.pad_to:
            session = self._ctx.sessions.for_send(address, pending.node_id, now)
        if session is not None:
            data = encode_session_message(
                request, pending.txid, session, self._ctx.flags, memo=self._ctx.auth.contacts
            )
            pending.session = session
            pending.counter = session.send_counter
            self._by_notice[(address, session.remote_sid, session.send_counter)] = pending.txid
            self._ctx.stats["tx.session"] += 1
        else:
            offer = None
            if self._should_offer(address, pending.node_id, request, recover):
                offer = self._ctx.sessions.make_offer(address, self._ctx.auth, self._ctx.rng, now)
                pending.offer = offer
                self._ctx.stats["session.offered"] += 1
            pad = self.pad_to if isinstance(request, _FINDS) else pending.pad_to
            data = encode_message(
                request, pending.txid, self._ctx.auth, self._ctx.flags, handshake=offer, pad_to=pad
            )
            self._ctx.stats["tx.signed"] += 1
        self.queue(data, address)

    def _should_offer(
        self,
        address: Address,
        node_id: NodeId | None,
        request: AnyRequest,
        recover: bool,
    ) -> bool:
        """Offer a session to peers that keep answering us (``session_after_answers`` times
        already), or that lost our session: a key agreement costs about one signed exchange,
        so it pays only with a peer we talk to again and again."""
        if not self._ctx.config.sessions or isinstance(request, Store):
            return False  # a maximal STORE has no room for an offer
        if not recover and self._answered.get(address, 0) < self._ctx.config.session_after_answers:
            return False
        return not self._ctx.sessions.offering(address) and address not in self._declined

    def finish_handshake(
        self, offer: HandshakeOffer, envelope: Envelope, address: Address, now: float
    ) -> None:
        accept = envelope.handshake
        observed = getattr(envelope.message, "observed", None)
        if isinstance(accept, HandshakeAccept) and envelope.session is None and observed:
            session = self._ctx.sessions.complete(
                offer,
                accept,
                peer_id=envelope.sender_id,
                peer_key=envelope.sender_key,
                own_id=self._ctx.node_id,
                observed=observed,
                auth=self._ctx.auth,
                now=now,
                address=address,
            )
            if session is not None:
                self._ctx.stats["session.established"] += 1
                return
        self._ctx.sessions.cancel_offer(offer)
        self._ctx.stats["session.declined"] += 1
        self._declined[address] = now
        self._declined.move_to_end(address)
        if len(self._declined) > _DECLINED:
            self._declined.popitem(last=False)

    def retransmit(self, pending: Pending, now: float) -> None:
        """Send a lookup or store request that passed its soft timeout once more: on a lossy
        path the copy usually gets through while the query is still waiting (a lost datagram
        would otherwise cost a lookup its grace, a put one replica, and the peer a failure in
        our table). The copy must be a fresh datagram the peer's replay protection lets
        through if it did get the original but its answer was lost: in a session, the next
        counter; signed, a new signature (FIND requests get one byte more padding, a STORE
        the empty padding field it went without). Not for requests carrying a session offer
        (a second offer would start a second handshake). A STORE stays idempotent: the same
        record again."""
        self.now = now
        request = pending.request
        if (
            pending.retransmitted
            or pending.offer is not None
            or not isinstance(request, FindNode | FindValue | Store)
        ):
            return
        pending.retransmitted = True
        session = pending.session
        if session is not None:
            if self._ctx.sessions.for_send(pending.address, pending.node_id, now) is not session:
                return  # expired or replaced since: the hard timeout will tell
            by_notice = self._by_notice
            by_notice.pop((pending.address, session.remote_sid, pending.counter), None)
            data = encode_session_message(
                request, pending.txid, session, self._ctx.flags, memo=self._ctx.auth.contacts
            )
            pending.counter = session.send_counter
            by_notice[(pending.address, session.remote_sid, session.send_counter)] = pending.txid
            self._ctx.stats["tx.session"] += 1
        else:
            pad_to = 1 if isinstance(request, Store) else min(MAX_DATAGRAM, self.pad_to + 1)
            try:
                data = encode_message(
                    request, pending.txid, self._ctx.auth, self._ctx.flags, pad_to=pad_to
                )
            except EncodeError:  # a STORE filling the datagram has no room for the padding
                # Not reached with today's limits (only a token longer than the decoder's
                # TOKEN_MAX_BYTES would fill it); kept so a change of limits costs a re-send,
                # not an exception in the timer loop.
                return
            self._ctx.stats["tx.signed"] += 1
        self._ctx.stats["tx.retransmits"] += 1
        self.queue(data, pending.address)
