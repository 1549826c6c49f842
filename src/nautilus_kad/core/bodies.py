"""Each message type's body, to and from the msgpack list it travels as.

The framing around a body (the signed envelope, the session datagram, handshakes, padding)
is :mod:`nautilus_kad.core.codec`'s; this module knows only what each of the message types
carries and checks it strictly (:mod:`nautilus_kad.core.fields` holds the field checks, the NAT
and traversal bodies their own modules). One dict look-up picks the encoder or decoder: this
runs for every datagram sent and received.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .connectwire import TRAVERSAL_TYPES, decode_traversal_body, encode_traversal_body
from .errors import DecodeError
from .fields import (
    ContactMemo,
    EncodeError,
    _bytes,
    _decode_address,
    _decode_contacts,
    _decode_record,
    _decode_token,
    _encode_address,
    _encode_contacts,
    _encode_record,
    _id_from_int,
    _int,
    _list,
)
from .ids import ID_BYTES, NodeId
from .limits import MAX_SEQ
from .messages import (
    Connect,
    ConnectReply,
    Contact,
    Dialback,
    DialbackReply,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Forward,
    ForwardReply,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    Register,
    RegisterReply,
    Store,
    Stored,
    Value,
    new_nodes,
)
from .natwire import NAT_TYPES, decode_nat_body, encode_nat_body

MAX_ERROR_TEXT = 128
"""The longest text an ERROR carries (a longer one is cut when sent, refused when received)."""


def _encode_body(message: Message) -> list[Any]:
    encode = _BODY_ENCODERS.get(type(message))
    if encode is None:
        raise EncodeError(f"not a message: {message!r}")
    return encode(message)


def _encode_store(message: Store) -> list[Any]:
    if message.expected_seq is None:
        return [_encode_record(message.record), message.token]
    return [_encode_record(message.record), message.token, message.expected_seq]


def _encode_error(message: Error) -> list[Any]:
    return [_encode_address(message.observed), int(message.code), message.message[:MAX_ERROR_TEXT]]


_BODY_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    Ping: lambda m: [],
    FindNode: lambda m: [m.target.to_bytes32()],
    FindValue: lambda m: [m.key.to_bytes32()],
    Store: _encode_store,
    Pong: lambda m: [_encode_address(m.observed)],
    Nodes: lambda m: [_encode_address(m.observed), m.token, _encode_contacts(m.contacts)],
    Value: lambda m: [_encode_address(m.observed), m.token, _encode_record(m.record)],
    Stored: lambda m: [_encode_address(m.observed)],
    Error: _encode_error,
    Dialback: encode_nat_body,
    ProbeRelay: encode_nat_body,
    Probe: encode_nat_body,
    DialbackReply: encode_nat_body,
    ProbeRelayReply: encode_nat_body,
    Register: encode_traversal_body,
    Connect: encode_traversal_body,
    Forward: encode_traversal_body,
    RegisterReply: encode_traversal_body,
    ConnectReply: encode_traversal_body,
    ForwardReply: encode_traversal_body,
}
"""Body encoders by message class: one dict look-up instead of a chain of class patterns
(this runs for every datagram sent)."""


def _decode_body(msg_type: MessageType, body: Any, memo: ContactMemo | None = None) -> Message:
    if type(body) is not list:
        raise DecodeError("schema", "body must be a list")
    if memo is not None and msg_type is MessageType.NODES:
        return _decode_nodes(msg_type, body, memo.decode)
    return _BODY_DECODERS[msg_type](msg_type, body)


def _decode_ping(msg_type: MessageType, body: list[Any]) -> Message:
    _list(body, 0, "PING body")
    return Ping()


def _decode_find_node(msg_type: MessageType, body: list[Any]) -> Message:
    (raw,) = _list(body, 1, "FIND_NODE body")
    raw = _bytes(raw, ID_BYTES, "target")
    return FindNode(_id_from_int(NodeId, int.from_bytes(raw, "big")))


def _decode_find_value(msg_type: MessageType, body: list[Any]) -> Message:
    (raw,) = _list(body, 1, "FIND_VALUE body")
    raw = _bytes(raw, ID_BYTES, "key")
    return FindValue(_id_from_int(NodeId, int.from_bytes(raw, "big")))


def _decode_store(msg_type: MessageType, body: list[Any]) -> Message:
    if len(body) == 3:
        record, token, expected = body
        return Store(
            _decode_record(record),
            _decode_token(token),
            _int(expected, 0, MAX_SEQ, "expected sequence"),
        )
    record, token = _list(body, 2, "STORE body")
    return Store(_decode_record(record), _decode_token(token))


def _decode_pong(msg_type: MessageType, body: list[Any]) -> Message:
    (observed,) = _list(body, 1, "PONG body")
    return Pong(_decode_address(observed))


def _decode_nodes(
    msg_type: MessageType,
    body: list[Any],
    decode_contacts: Callable[[list[Any]], tuple[Contact, ...]] = _decode_contacts,
) -> Message:
    observed, token, contacts = _list(body, 3, "NODES body")
    if type(contacts) is not list:
        raise DecodeError("schema", "contacts must be a list")
    return new_nodes(_decode_address(observed), _decode_token(token), decode_contacts(contacts))


def _decode_value(msg_type: MessageType, body: list[Any]) -> Message:
    observed, token, record = _list(body, 3, "VALUE body")
    return Value(_decode_address(observed), _decode_token(token), _decode_record(record))


def _decode_stored(msg_type: MessageType, body: list[Any]) -> Message:
    (observed,) = _list(body, 1, "STORED body")
    return Stored(_decode_address(observed))


def _decode_error(msg_type: MessageType, body: list[Any]) -> Message:
    observed, code, text = _list(body, 3, "ERROR body")
    if type(text) is not str or len(text) > MAX_ERROR_TEXT:
        raise DecodeError("schema", "error text")
    try:
        error_code = ErrorCode(_int(code, 0, 255, "error code"))
    except ValueError as exc:
        raise DecodeError("schema", "unknown error code") from exc
    return Error(_decode_address(observed), error_code, text)


_BODY_DECODERS: dict[MessageType, Callable[[MessageType, list[Any]], Message]] = {
    MessageType.PING: _decode_ping,
    MessageType.FIND_NODE: _decode_find_node,
    MessageType.FIND_VALUE: _decode_find_value,
    MessageType.STORE: _decode_store,
    MessageType.PONG: _decode_pong,
    MessageType.NODES: _decode_nodes,
    MessageType.VALUE: _decode_value,
    MessageType.STORED: _decode_stored,
    MessageType.ERROR: _decode_error,
    **{t: decode_nat_body for t in NAT_TYPES.values()},
    **{t: decode_traversal_body for t in TRAVERSAL_TYPES.values()},
}
"""Body decoders by message type (every type of :class:`MessageType` has one): one dict
look-up instead of a chain of value patterns, for every datagram received."""
assert set(_BODY_DECODERS) == set(MessageType)
