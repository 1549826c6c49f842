"""One request we sent and whose answer we may still accept.

Shared by the rpc layer (which owns the table of them, their timers and their owners) and the
wire (which frames them: the session they went out in, the offer they carried, whether they
were re-sent).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import NodeId
from .messages import Address, AnyRequest
from .session import HandshakeOffer, Session


@dataclass(slots=True)
class Pending:
    """A request we sent and whose answer we may still accept."""

    txid: bytes
    address: Address
    node_id: NodeId | None
    request: AnyRequest
    sent_at: float
    query_id: int | None
    slow: bool = False
    session: Session | None = None
    """The session the request went out in (None: signed)."""
    counter: int = 0
    offer: HandshakeOffer | None = None
    """The session offer the signed request carried."""
    retried: bool = False
    pad_to: int = 0
    """Pad the (then always signed) datagram to at least this many bytes: a PROBE_RELAY
    pays for the probe copies it asks for."""
    retransmitted: bool = False
    """Already sent a second time after its soft timeout."""
    """Already re-sent once after an unknown-session notice."""
