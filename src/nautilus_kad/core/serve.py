"""Answering the four Kademlia requests.

:class:`Responder` answers PING, FIND_NODE, FIND_VALUE and STORE. A STORE's write token is
checked first, before anything changes (no routing-table check of the sender, no session
accepted: a forged source cannot hold the token of its address); the sender's effect on the
routing table is the peers' business (:meth:`~.peers.Peers.on_request`); the answer goes out
through the wire in the framing the request came in, within the anti-amplification limit when
nothing has verified the requester's address.

Whom we name as closest is asked through the ``closest_for(target, requester)`` callable given
at construction: the engine's overridable hook (the simulator's hostile nodes lie there).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from .config import MAX_DATAGRAM
from .context import NodeContext
from .holdings import Holdings
from .ids import NodeId
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
    Ping,
    Pong,
    Request,
    Store,
    Stored,
    Value,
    new_nodes,
)
from .peers import Peers
from .records import Record, for_transfer
from .tokens import WriteTokens
from .wire import Wire

_log = logging.getLogger("nautilus_kad.engine")
_RX_REQUEST_KEY = {t: f"rx.request.{t.name}" for t in MessageType}


class Responder:
    """Serves requests (see the module docstring)."""

    __slots__ = ("_closest_for", "_ctx", "_holdings", "_peers", "_tokens", "_wire")

    def __init__(
        self,
        ctx: NodeContext,
        wire: Wire,
        tokens: WriteTokens,
        holdings: Holdings,
        peers: Peers,
        closest_for: Callable[[NodeId, NodeId], tuple[Contact, ...]],
    ) -> None:
        self._ctx = ctx
        self._wire = wire
        self._tokens = tokens
        self._holdings = holdings
        self._peers = peers
        self._closest_for = closest_for

    def answer(
        self,
        envelope: Envelope,
        request: Request,
        address: Address,
        now: float,
        request_size: int = MAX_DATAGRAM,
    ) -> None:
        ctx = self._ctx
        ctx.stats[_RX_REQUEST_KEY[request.TYPE]] += 1
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "%s from %s at %s:%d", request.TYPE.name, envelope.sender_id.short(), *address
            )
        sender = envelope.sender_id
        wire = self._wire
        verified = envelope.session is not None or wire.address_verified(sender, address, now)
        if not verified:
            wire.budget.received(address, request_size)
        if type(request) is Store and not self._tokens.valid(request.token, address):
            # Refused before anything changes: no routing-table check of the sender, no
            # session accepted (a forged source cannot hold the token of the address).
            ctx.stats["store.rejected.token"] += 1
            refusal = Error(address, ErrorCode.BAD_TOKEN, "missing or expired write token")
            plain = dataclasses.replace(envelope, handshake=None)
            wire.respond(plain, refusal, address, now, request_size, verified)
            return
        self._peers.on_request(sender, address, envelope.flags, now)

        response: Message
        match request:
            case Ping():
                response = Pong(address)
            case FindNode(target=target):
                token = self._tokens.issue(address)
                response = new_nodes(address, token, self._closest_for(target, sender))
            case FindValue(key=key):
                token = self._tokens.issue(address)
                stored = ctx.store.get(key, now)
                if stored is not None:
                    response = Value(
                        address, token, for_transfer(stored.record, stored.expires_at, now)
                    )
                else:
                    response = new_nodes(address, token, self._closest_for(key, sender))
            case Store(record=record, expected_seq=expected_seq):
                response = self._store(record, expected_seq, address, now)
        wire.respond(envelope, response, address, now, request_size, verified)

    def _store(
        self, record: Record, expected_seq: int | None, address: Address, now: float
    ) -> Message:
        """The storer's rules (the token was checked before anything else, in :meth:`answer`)."""
        code, text = self._holdings.accept(
            record, expected_seq, now, validate=True, source=address[0]
        )
        if code is None:
            return Stored(address)
        return Error(address, code, text)
