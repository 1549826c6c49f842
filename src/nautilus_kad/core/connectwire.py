"""The NAT traversal messages and their bodies on the wire (strict, bounded).

A client-mode node REGISTERs with a few servers (its rendezvous); an initiator sends a
CONNECT carrying its sealed offer to the target's rendezvous, which FORWARDs it to the
mapping it observed the target at and returns the target's sealed answer in its CONNECT_REPLY.
A server target answers a CONNECT itself. docs/nat.md has the whole protocol.

=======================  ====  ==============================================  ==============
message                  type  body                                            answered by
=======================  ====  ==============================================  ==============
REGISTER (C → R)         0x08  ``[]``                                          REGISTER_REPLY
CONNECT (A → R or B)     0x09  ``[target(32), offer(≤512), relay(bool)]``      CONNECT_REPLY
FORWARD (R → B)          0x0A  ``[offer(≤512), [ip, port] source, circuit]``   FORWARD_REPLY
REGISTER_REPLY           0x88  ``[[ip, port] observed, status, lease(s)]``      —
CONNECT_REPLY            0x89  ``[observed, status, answer(≤512), peer|nil,``  —
                               ``circuit, relay_status]``
FORWARD_REPLY            0x8A  ``[observed, status, answer(≤512)]``            —
=======================  ====  ==============================================  ==============

They travel in the same signed envelope (or session) as every other request, so the hop is
authenticated; the offer and answer inside are sealed end to end (core/introduction.py). This
module raises nothing but :class:`~.errors.DecodeError` on input.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import DecodeError
from .ids import NodeId
from .messages import (
    Address,
    Connect,
    ConnectReply,
    Forward,
    ForwardReply,
    MessageType,
    Register,
    RegisterReply,
    TraversalMessage,
    TraversalStatus,
)

MAX_SEALED = 512
"""Largest offer or answer accepted (a real one is about 300 bytes)."""
MAX_CIRCUIT = 2**32 - 1

TRAVERSAL_TYPES: dict[int, MessageType] = {
    int(t): t
    for t in (
        MessageType.REGISTER,
        MessageType.CONNECT,
        MessageType.FORWARD,
        MessageType.REGISTER_REPLY,
        MessageType.CONNECT_REPLY,
        MessageType.FORWARD_REPLY,
    )
}


def encode_address(address: Address) -> list[Any]:
    return [ipaddress.ip_address(address[0]).packed, address[1]]


def decode_address(value: Any) -> Address:
    if type(value) is not list or len(value) != 2:
        raise DecodeError("schema", "address must be a list of 2")
    raw, port = value
    if type(raw) is not bytes or len(raw) not in (4, 16):
        raise DecodeError("schema", "address must be 4 or 16 bytes")
    if type(port) is not int or not 1 <= port <= 65535:
        raise DecodeError("schema", "port out of range")
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return (str(ip), port)


def encode_traversal_body(message: TraversalMessage) -> list[Any]:
    """The msgpack-ready body of ``message``."""
    match message:
        case Register():
            return []
        case Connect(target=target, offer=offer, relay=relay):
            return [target.to_bytes32(), offer, relay]
        case Forward(offer=offer, source=source, circuit=circuit):
            return [offer, encode_address(source), circuit]
        case RegisterReply(observed=observed, status=status, lease=lease):
            return [encode_address(observed), int(status), lease]
        case ConnectReply():
            peer = None if message.peer is None else encode_address(message.peer)
            return [
                encode_address(message.observed),
                int(message.status),
                message.answer,
                peer,
                message.circuit,
                int(message.relay_status),
            ]
        case ForwardReply(observed=observed, status=status, answer=answer):
            return [encode_address(observed), int(status), answer]
    raise ValueError(f"not a traversal message: {message!r}")  # pragma: no cover


def _sealed(value: Any) -> bytes:
    if type(value) is not bytes or len(value) > MAX_SEALED:
        raise DecodeError("schema", f"sealed blob must be bytes of at most {MAX_SEALED}")
    return value


def _int(value: Any, high: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= high:
        raise DecodeError("schema", f"{what} out of range")
    return value


def _status(value: Any) -> TraversalStatus:
    try:
        return TraversalStatus(_int(value, 255, "status"))
    except ValueError:
        raise DecodeError("schema", "unknown traversal status") from None


def _fields(body: list[Any], count: int, name: str) -> list[Any]:
    if len(body) != count:
        raise DecodeError("schema", f"{name} body must be a list of {count}")
    return body


def decode_traversal_body(msg_type: MessageType, body: Any) -> TraversalMessage:
    """Strictly decode the body of a ``msg_type`` message (exact lengths and types)."""
    if type(body) is not list:
        raise DecodeError("schema", "body must be a list")
    match msg_type:
        case MessageType.REGISTER:
            _fields(body, 0, "REGISTER")
            return Register()
        case MessageType.CONNECT:
            target, offer, relay = _fields(body, 3, "CONNECT")
            if type(target) is not bytes or len(target) != 32 or type(relay) is not bool:
                raise DecodeError("schema", "CONNECT target or relay flag")
            return Connect(NodeId(int.from_bytes(target, "big")), _sealed(offer), relay)
        case MessageType.FORWARD:
            offer, source, circuit = _fields(body, 3, "FORWARD")
            return Forward(
                _sealed(offer), decode_address(source), _int(circuit, MAX_CIRCUIT, "circuit")
            )
        case MessageType.REGISTER_REPLY:
            observed, status, lease = _fields(body, 3, "REGISTER_REPLY")
            return RegisterReply(
                decode_address(observed), _status(status), _int(lease, 2**20, "lease")
            )
        case MessageType.CONNECT_REPLY:
            observed, status, answer, peer, circuit, relay_status = _fields(
                body, 6, "CONNECT_REPLY"
            )
            return ConnectReply(
                decode_address(observed),
                _status(status),
                _sealed(answer),
                None if peer is None else decode_address(peer),
                _int(circuit, MAX_CIRCUIT, "circuit"),
                _status(relay_status),
            )
        case MessageType.FORWARD_REPLY:
            observed, status, answer = _fields(body, 3, "FORWARD_REPLY")
            return ForwardReply(decode_address(observed), _status(status), _sealed(answer))
    raise DecodeError("type", f"not a traversal message type: {msg_type}")  # pragma: no cover
