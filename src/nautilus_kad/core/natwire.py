"""The reachability messages and their bodies on the wire (strict, bounded).

Three parties test whether A is reachable: A asks a helper B (DIALBACK), B asks a prober C
from its own routing table (PROBE_RELAY) to send A a PROBE at the address B saw A's request
come from. A never contacted C, so the PROBE is unsolicited: if it arrives, A's NAT (if any)
lets strangers in.

========================  ====  ====================================  =====================
message                   type  body                                  answered by
========================  ====  ====================================  =====================
DIALBACK (A → B)          0x05  ``[nonce(8)]``                        DIALBACK_REPLY
PROBE_RELAY (B → C)       0x06  ``[nonce(8), [ip(4|16), port]]``      PROBE_RELAY_REPLY
PROBE (C → A)             0x07  ``[nonce(8)]``                        nothing, ever
DIALBACK_REPLY (B → A)    0x86  ``[[ip, port] observed, status]``     —
PROBE_RELAY_REPLY (C → B) 0x87  ``[[ip, port] observed, status]``     —
========================  ====  ====================================  =====================

They travel in the same signed envelope (or session) as the four Kademlia requests, so every
one is authenticated; the dataclasses live with the others in :mod:`.messages`, and this
module only encodes and decodes their bodies, raising nothing but
:class:`~.errors.DecodeError` on input. The codec dispatches to it by type.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import DecodeError
from .messages import (
    Address,
    Dialback,
    DialbackReply,
    MessageType,
    NatMessage,
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    ProbeStatus,
)

__all__ = [
    "NAT_TYPES",
    "NONCE_BYTES",
    "Dialback",
    "DialbackReply",
    "NatMessage",
    "Probe",
    "ProbeRelay",
    "ProbeRelayReply",
    "ProbeStatus",
    "decode_nat_body",
    "encode_nat_body",
]

NONCE_BYTES = 8


NAT_TYPES: dict[int, MessageType] = {
    int(t): t
    for t in (
        MessageType.DIALBACK,
        MessageType.PROBE_RELAY,
        MessageType.PROBE,
        MessageType.DIALBACK_REPLY,
        MessageType.PROBE_RELAY_REPLY,
    )
}
"""The message types of the reachability test."""


def _address(address: Address) -> list[Any]:
    return [ipaddress.ip_address(address[0]).packed, address[1]]


def encode_nat_body(message: NatMessage) -> list[Any]:
    """The msgpack-ready body of ``message``."""
    match message:
        case Dialback(nonce=nonce) | Probe(nonce=nonce):
            return [_nonce(nonce)]
        case ProbeRelay(nonce=nonce, target=target):
            return [_nonce(nonce), _address(target)]
        case (
            DialbackReply(observed=observed, status=status)
            | ProbeRelayReply(observed=observed, status=status)
        ):
            return [_address(observed), int(status)]
    raise ValueError(f"not a NAT message: {message!r}")


def _nonce(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != NONCE_BYTES:
        raise DecodeError("schema", f"nonce must be {NONCE_BYTES} bytes")
    return value


def _decode_address(value: Any) -> Address:
    if type(value) is not list or len(value) != 2:
        raise DecodeError("schema", "address must be a list of 2")
    raw, port = value
    if type(raw) is not bytes or len(raw) not in (4, 16):
        raise DecodeError("schema", "address must be 4 or 16 bytes")
    if type(port) is not int or not 1 <= port <= 65535:
        raise DecodeError("schema", "port out of range")
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return (str(ip), port)


def _status(value: Any) -> ProbeStatus:
    if type(value) is not int:
        raise DecodeError("schema", "status must be an integer")
    try:
        return ProbeStatus(value)
    except ValueError:
        raise DecodeError("schema", "unknown probe status") from None


def decode_nat_body(msg_type: MessageType, body: Any) -> NatMessage:
    """Strictly decode the body of a ``msg_type`` message (exact lengths and types)."""
    if type(body) is not list:
        raise DecodeError("schema", "body must be a list")
    match msg_type:
        case MessageType.DIALBACK | MessageType.PROBE:
            if len(body) != 1:
                raise DecodeError("schema", f"{msg_type.name} body must be a list of 1")
            nonce = _nonce(body[0])
            return Dialback(nonce) if msg_type is MessageType.DIALBACK else Probe(nonce)
        case MessageType.PROBE_RELAY:
            if len(body) != 2:
                raise DecodeError("schema", "PROBE_RELAY body must be a list of 2")
            return ProbeRelay(_nonce(body[0]), _decode_address(body[1]))
        case MessageType.DIALBACK_REPLY | MessageType.PROBE_RELAY_REPLY:
            if len(body) != 2:
                raise DecodeError("schema", f"{msg_type.name} body must be a list of 2")
            observed, status = _decode_address(body[0]), _status(body[1])
            if msg_type is MessageType.DIALBACK_REPLY:
                return DialbackReply(observed, status)
            return ProbeRelayReply(observed, status)
    raise DecodeError("type", f"not a NAT message type: {msg_type}")  # pragma: no cover
