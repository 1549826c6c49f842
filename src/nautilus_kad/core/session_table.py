"""The session table: every session of one node, bounded, with expiry, and the handshake.

Split from :mod:`.session` (which owns the wire format, the key derivation and one session's
AEAD) so the per-datagram path and the bookkeeping around it can change apart: sessions are
found by local session id when receiving and by peer address when sending, pending offers are
bounded, and half-open sessions (possibly from a spoofed source) go first when the table is
full.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .session import CipherPool, HandshakeAccept, HandshakeOffer, Session, derive_keys

if TYPE_CHECKING:
    import random

    from .auth import Authenticator
    from .config import KadConfig
    from .ids import NodeId
    from .messages import Address

_MAX_SID = 2**32 - 1


@dataclass(slots=True)
class PendingOffer:
    """An initiator's half of a handshake, waiting for the accept."""

    private: Any
    ephemeral: bytes
    sid: int
    address: Address
    created: float


class SessionTable:
    """Every session of one node: by local session id (receiving) and by peer address
    (sending), bounded, with expiry. Also runs both halves of the handshake."""

    def __init__(self, config: KadConfig) -> None:
        self.idle_timeout = config.session_idle_timeout
        self.max_lifetime = config.session_max_lifetime
        self.max_sessions = config.max_sessions
        self.max_offers = config.max_pending_offers
        # Use a session for sending only while the peer will surely still accept it.
        self._send_idle = self.idle_timeout * 0.9
        self._send_lifetime = self.max_lifetime * 0.95
        self._by_sid: OrderedDict[int, Session] = OrderedDict()
        self._by_address: dict[Address, Session] = {}
        self._offers: OrderedDict[Address, PendingOffer] = OrderedDict()
        self._offer_sids: set[int] = set()
        self.handshakes_completed = 0
        self.ciphers = CipherPool(config.session_ciphers)

    def __len__(self) -> int:
        return len(self._by_sid)

    def __iter__(self) -> Any:
        return iter(list(self._by_sid.values()))

    # --- lookups -----------------------------------------------------------------------

    def for_send(self, address: Address, node_id: NodeId | None, now: float) -> Session | None:
        """A session to send to ``address`` in, if one is live (and is ``node_id``'s)."""
        session = self._by_address.get(address)
        if session is None:
            return None
        if node_id is not None and session.peer_id != node_id:
            return None
        if now - session.last_rx > self._send_idle or now - session.created > self._send_lifetime:
            return None
        return session

    def offering(self, address: Address) -> bool:
        """Whether a handshake with ``address`` is already under way."""
        return address in self._offers

    # --- handshake ---------------------------------------------------------------------

    def make_offer(
        self, address: Address, auth: Authenticator, rng: random.Random, now: float
    ) -> HandshakeOffer:
        """Start a handshake with ``address`` (the caller puts the offer in a request)."""
        private, public = auth.new_ephemeral(rng)
        sid = self._new_sid(rng)
        self._drop_offer(address)
        self._offers[address] = PendingOffer(private, public, sid, address, now)
        self._offer_sids.add(sid)
        while len(self._offers) > self.max_offers:
            self._drop_offer(next(iter(self._offers)))
        return HandshakeOffer(public, sid, address)

    def cancel_offer(self, offer: HandshakeOffer) -> None:
        """Forget ``offer`` (its request failed)."""
        pending = self._offers.get(offer.to)
        if pending is not None and pending.sid == offer.sid:
            self._drop_offer(offer.to)

    def _drop_offer(self, address: Address) -> None:
        pending = self._offers.pop(address, None)
        if pending is not None:
            self._offer_sids.discard(pending.sid)

    def accept(
        self,
        offer: HandshakeOffer,
        *,
        peer_id: NodeId,
        peer_key: bytes,
        address: Address,
        own_id: NodeId,
        auth: Authenticator,
        rng: random.Random,
        now: float,
    ) -> tuple[HandshakeAccept, Session] | None:
        """Answer an offer that arrived in a verified signed request from ``address``."""
        private, public = auth.new_ephemeral(rng)
        shared = auth.agree(private, offer.ephemeral)
        if shared is None:
            return None
        sid = self._new_sid(rng)
        to_initiator, to_responder = derive_keys(
            shared, peer_id, own_id, offer.ephemeral, public, offer.sid, sid, address, offer.to
        )
        session = Session(
            peer_id=peer_id,
            peer_key=peer_key,
            address=address,
            local_sid=sid,
            remote_sid=offer.sid,
            send_key=to_responder,
            recv_key=to_initiator,
            now=now,
            confirmed=False,
            ciphers=self.ciphers,
        )
        return HandshakeAccept(public, sid), session

    def complete(
        self,
        offer: HandshakeOffer,
        accept: HandshakeAccept,
        *,
        peer_id: NodeId,
        peer_key: bytes,
        own_id: NodeId,
        observed: Address,
        auth: Authenticator,
        now: float,
        address: Address | None = None,
    ) -> Session | None:
        """Finish our handshake with the responder's accept (from its verified response).

        ``observed`` is our address as the responder saw it (every response carries it): the
        responder bound the keys to that address. ``address`` is where the accept came from
        (equal to the offer's; passed so the session keeps the node's one copy of it).
        """
        pending = self._offers.get(offer.to)
        if pending is None or pending.sid != offer.sid:
            return None
        self._drop_offer(offer.to)
        shared = auth.agree(pending.private, accept.ephemeral)
        if shared is None:
            return None
        to_initiator, to_responder = derive_keys(
            shared,
            own_id,
            peer_id,
            pending.ephemeral,
            accept.ephemeral,
            pending.sid,
            accept.sid,
            observed,
            offer.to,
        )
        session = Session(
            peer_id=peer_id,
            peer_key=peer_key,
            address=offer.to if address is None or address != offer.to else address,
            local_sid=pending.sid,
            remote_sid=accept.sid,
            send_key=to_initiator,
            recv_key=to_responder,
            now=now,
            confirmed=True,
            ciphers=self.ciphers,
        )
        self.add(session)
        return session

    # --- bookkeeping -------------------------------------------------------------------

    def add(self, session: Session) -> None:
        """Keep ``session``; it becomes the one used to send to its address. A session it
        replaces stays receivable until it expires or is evicted."""
        self._by_sid[session.local_sid] = session
        self._by_address[session.address] = session
        self.handshakes_completed += 1
        while len(self._by_sid) > self.max_sessions:
            self._evict(session)

    def _evict(self, newcomer: Session) -> None:
        """Make room: the oldest half-open session other than ``newcomer`` goes first (a flood
        of offers from spoofed sources only ever costs one confirmed session), else the least
        recently used one."""
        victim = None
        for candidate in self._by_sid.values():  # least recently used first
            if not candidate.confirmed and candidate is not newcomer:
                victim = candidate
                break
        if victim is None:
            victim = next(s for s in self._by_sid.values() if s is not newcomer)
        self.remove(victim)

    def receive(self, sid: int, address: Address, now: float) -> Session | None:
        """The live session ``sid`` at ``address``, or None (unknown, moved or expired; an
        expired one is dropped). A session used is the last to be evicted."""
        by_sid = self._by_sid
        session = by_sid.get(sid)
        if session is None or session.address != address:
            return None
        if now - session.last_rx > self.idle_timeout or now - session.created > self.max_lifetime:
            self.remove(session)
            return None
        by_sid.move_to_end(sid)
        return session

    def remove(self, session: Session) -> None:
        if self._by_sid.get(session.local_sid) is session:
            del self._by_sid[session.local_sid]
        if self._by_address.get(session.address) is session:
            del self._by_address[session.address]

    def expire(self, now: float) -> int:
        """Drop sessions past their idle timeout or lifetime, and stale offers."""
        dead = [
            s
            for s in self._by_sid.values()
            if now - s.last_rx > self.idle_timeout or now - s.created > self.max_lifetime
        ]
        for session in dead:
            self.remove(session)
        old_offers = [a for a, o in self._offers.items() if now - o.created > self.idle_timeout]
        for address in old_offers:
            self._drop_offer(address)
        return len(dead)

    def _new_sid(self, rng: random.Random) -> int:
        while True:
            sid = rng.randint(1, _MAX_SID)
            if sid not in self._by_sid and sid not in self._offer_sids:
                return sid
