"""The wire format: a versioned, signed msgpack envelope, decoded strictly.

Datagram = ``msgpack([version, type, txid, sender_pubkey, flags, body]) ‖ signature`` where the
64-byte signature covers exactly the preceding bytes. Everything from the network is untrusted:
sizes are bounded before parsing, every field's type and length is checked exactly (``bool`` is
not an ``int`` here), and the signature is checked after the cheap structural checks and before
anything reaches the engine. The only exception :func:`decode_datagram` raises is
:class:`DecodeError`.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

import msgpack

from .auth import Authenticator
from .config import MAX_DATAGRAM
from .errors import DecodeError
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from .ids import ID_BYTES, NodeId
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
    Store,
    Stored,
    Value,
)
from .records import Record, RecordKind

PROTOCOL_VERSION = 1
TXID_BYTES = 8
TOKEN_MAX_BYTES = 8
"""Write tokens are 8-byte truncated HMACs (engine.TOKEN_BYTES); a longer bound would let a
maximum-size VALUE answer overflow the datagram budget."""
MAX_CONTACTS = 32
"""Hard decoder bound; the engine itself never sends more than k."""
MAX_ERROR_TEXT = 128

_UNPACK_LIMITS: dict[str, Any] = {
    "raw": False,
    "use_list": True,
    "strict_map_key": True,
    "max_str_len": MAX_ERROR_TEXT * 4,
    "max_bin_len": MAX_DATAGRAM,
    "max_array_len": MAX_CONTACTS,
    "max_map_len": 0,
    "max_ext_len": 0,
}
_MIN_DATAGRAM = SIGNATURE_BYTES + 1 + 2 + TXID_BYTES + PUBLIC_KEY_BYTES
_REQUEST_TYPES = frozenset(t for t in MessageType if t.is_request)
_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}
_id_from_int = int.__new__
"""``_id_from_int(NodeId, value)`` builds a NodeId without the range check, for values
decoded from exactly 32 bytes (always in range)."""


class EncodeError(ValueError):
    """Our own message does not fit the wire rules (a bug or an oversized value)."""


# --- addresses -------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def pack_ip(host: str) -> bytes:
    """Textual IPv4/IPv6 address to its 4 or 16 packed bytes."""
    return ipaddress.ip_address(host).packed


@lru_cache(maxsize=65536)
def unpack_ip(raw: bytes) -> str:
    """Packed 4 or 16 bytes back to text (raises ValueError on any other length)."""
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    raise ValueError("an IP address is 4 or 16 bytes")


def _encode_address(address: Address) -> list[Any]:
    return [pack_ip(address[0]), address[1]]


def _encode_contact(contact: Contact) -> list[Any]:
    return [contact.node_id.to_bytes32(), pack_ip(contact.host), contact.port]


def _encode_record(record: Record) -> list[Any]:
    return [
        int(record.kind),
        record.key.to_bytes32(),
        record.value,
        record.timestamp_ms,
        record.ttl,
    ]


def _encode_body(message: Message) -> list[Any]:
    match message:
        case Ping():
            return []
        case FindNode(target=target):
            return [target.to_bytes32()]
        case FindValue(key=key):
            return [key.to_bytes32()]
        case Store(record=record, token=token):
            return [_encode_record(record), token]
        case Pong(observed=observed):
            return [_encode_address(observed)]
        case Nodes(observed=observed, token=token, contacts=contacts):
            # _encode_contact inlined: a NODES answer carries up to k contacts and is the
            # most frequent large message.
            return [
                _encode_address(observed),
                token,
                [[c.node_id.to_bytes(ID_BYTES, "big"), pack_ip(c.host), c.port] for c in contacts],
            ]
        case Value(observed=observed, token=token, record=record):
            return [_encode_address(observed), token, _encode_record(record)]
        case Stored(observed=observed):
            return [_encode_address(observed)]
        case Error(observed=observed, code=code, message=text):
            return [_encode_address(observed), int(code), text[:MAX_ERROR_TEXT]]
    raise EncodeError(f"not a message: {message!r}")


def encode_message(message: Message, txid: bytes, auth: Authenticator, flags: int = 0) -> bytes:
    """Frame, sign and return one datagram.

    A NODES answer that would not fit in :data:`MAX_DATAGRAM` (IPv6 contacts) is trimmed
    from its far end; any other oversized message raises :class:`EncodeError`.
    """
    if len(txid) != TXID_BYTES:
        raise EncodeError("txid must be 8 bytes")
    while True:
        payload = msgpack.packb(
            [
                PROTOCOL_VERSION,
                int(message.TYPE),
                txid,
                auth.identity.public_key,
                flags,
                _encode_body(message),
            ],
            use_bin_type=True,
        )
        if len(payload) + SIGNATURE_BYTES <= MAX_DATAGRAM:
            return bytes(payload) + auth.sign(payload)
        if isinstance(message, Nodes) and message.contacts:
            message = Nodes(message.observed, message.token, message.contacts[:-1])
            continue
        raise EncodeError(
            f"{message.TYPE.name} needs {len(payload) + SIGNATURE_BYTES} bytes, "
            f"more than the {MAX_DATAGRAM}-byte datagram limit"
        )


# --- decoding --------------------------------------------------------------------------


def _bytes(value: Any, length: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != length:
        raise DecodeError("schema", f"{what} must be {length} bytes")
    return value


def _int(value: Any, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise DecodeError("schema", f"{what} out of range")
    return value


def _list(value: Any, length: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != length:
        raise DecodeError("schema", f"{what} must be a list of {length}")
    return value


def _decode_host(raw: Any) -> str:
    if type(raw) is not bytes:
        raise DecodeError("schema", "address must be bytes")
    try:
        return unpack_ip(raw)
    except ValueError as exc:
        raise DecodeError("schema", "address must be 4 or 16 bytes") from exc


def _decode_address(value: Any) -> Address:
    host_raw, port = _list(value, 2, "address")
    return (_decode_host(host_raw), _int(port, 1, 65535, "port"))


def _decode_contact(value: Any) -> Contact:
    raw_id, host_raw, port = _list(value, 3, "contact")
    return Contact(
        NodeId.from_bytes_exact(_bytes(raw_id, ID_BYTES, "contact id")),
        _decode_host(host_raw),
        _int(port, 1, 65535, "contact port"),
    )


_CONTACT_CACHE_SIZE = 65536
_contact_cache: dict[bytes, tuple[bytes, int, Contact]] = {}
"""Recently decoded contacts by raw id, with the raw address they came with. Contacts are
immutable, so a NODES answer naming a peer we decoded before reuses that object instead of
rebuilding it (peers are named over and over). Cleared when full."""


def _decode_contacts(values: list[Any]) -> tuple[Contact, ...]:
    """:func:`_decode_contact` over a whole NODES list, inlined (the decoder's hot loop):
    same checks in the same order, same errors."""
    contacts: list[Contact] = []
    append = contacts.append
    cache = _contact_cache
    for value in values:
        if type(value) is not list or len(value) != 3:
            raise DecodeError("schema", "contact must be a list of 3")
        raw_id, host_raw, port = value
        if type(raw_id) is not bytes or len(raw_id) != ID_BYTES:
            raise DecodeError("schema", f"contact id must be {ID_BYTES} bytes")
        known = cache.get(raw_id)
        if known is not None and known[0] == host_raw and type(port) is int and known[1] == port:
            append(known[2])  # the same id, address bytes and port were valid before
            continue
        if type(host_raw) is not bytes:
            raise DecodeError("schema", "address must be bytes")
        try:
            host = unpack_ip(host_raw)
        except ValueError as exc:
            raise DecodeError("schema", "address must be 4 or 16 bytes") from exc
        if type(port) is not int or not 1 <= port <= 65535:
            raise DecodeError("schema", "contact port out of range")
        contact = Contact(_id_from_int(NodeId, int.from_bytes(raw_id, "big")), host, port)
        if len(cache) >= _CONTACT_CACHE_SIZE:
            cache.clear()
        cache[raw_id] = (host_raw, port, contact)
        append(contact)
    return tuple(contacts)


def _decode_token(value: Any) -> bytes:
    if type(value) is not bytes or len(value) > TOKEN_MAX_BYTES:
        raise DecodeError("schema", "token must be at most 8 bytes")
    return value


def _decode_record(value: Any) -> Record:
    kind, raw_key, data, timestamp_ms, ttl = _list(value, 5, "record")
    try:
        record_kind = RecordKind(_int(kind, 0, 255, "record kind"))
    except ValueError as exc:
        raise DecodeError("schema", "unknown record kind") from exc
    if type(data) is not bytes:
        raise DecodeError("schema", "record value must be bytes")
    return Record(
        key=NodeId.from_bytes_exact(_bytes(raw_key, ID_BYTES, "record key")),
        value=data,
        timestamp_ms=_int(timestamp_ms, 0, 2**63 - 1, "timestamp"),
        ttl=_int(ttl, 1, 2**32 - 1, "ttl"),
        kind=record_kind,
    )


def _decode_body(msg_type: MessageType, body: Any) -> Message:
    if type(body) is not list:
        raise DecodeError("schema", "body must be a list")
    match msg_type:
        case MessageType.PING:
            _list(body, 0, "PING body")
            return Ping()
        case MessageType.FIND_NODE:
            (raw,) = _list(body, 1, "FIND_NODE body")
            return FindNode(NodeId.from_bytes_exact(_bytes(raw, ID_BYTES, "target")))
        case MessageType.FIND_VALUE:
            (raw,) = _list(body, 1, "FIND_VALUE body")
            return FindValue(NodeId.from_bytes_exact(_bytes(raw, ID_BYTES, "key")))
        case MessageType.STORE:
            record, token = _list(body, 2, "STORE body")
            return Store(_decode_record(record), _decode_token(token))
        case MessageType.PONG:
            (observed,) = _list(body, 1, "PONG body")
            return Pong(_decode_address(observed))
        case MessageType.NODES:
            observed, token, contacts = _list(body, 3, "NODES body")
            if type(contacts) is not list:
                raise DecodeError("schema", "contacts must be a list")
            return Nodes(
                _decode_address(observed),
                _decode_token(token),
                _decode_contacts(contacts),
            )
        case MessageType.VALUE:
            observed, token, record = _list(body, 3, "VALUE body")
            return Value(_decode_address(observed), _decode_token(token), _decode_record(record))
        case MessageType.STORED:
            (observed,) = _list(body, 1, "STORED body")
            return Stored(_decode_address(observed))
        case MessageType.ERROR:
            observed, code, text = _list(body, 3, "ERROR body")
            if type(text) is not str or len(text) > MAX_ERROR_TEXT:
                raise DecodeError("schema", "error text")
            try:
                error_code = ErrorCode(_int(code, 0, 255, "error code"))
            except ValueError as exc:
                raise DecodeError("schema", "unknown error code") from exc
            return Error(_decode_address(observed), error_code, text)
    raise DecodeError("type", f"unknown message type {msg_type}")  # pragma: no cover


def decode_datagram(data: bytes, auth: Authenticator) -> Envelope:
    """Parse, bound-check and authenticate one datagram.

    Raises :class:`DecodeError` (with a metric-friendly ``reason``) for anything invalid;
    never any other exception.
    """
    if len(data) > MAX_DATAGRAM:
        raise DecodeError("oversize")
    if len(data) < _MIN_DATAGRAM:
        raise DecodeError("undersize")
    payload = data[:-SIGNATURE_BYTES]
    signature = data[-SIGNATURE_BYTES:]
    try:
        envelope = msgpack.unpackb(payload, **_UNPACK_LIMITS)
    except Exception as exc:  # the C parser raises several unrelated types on garbage
        raise DecodeError("msgpack", type(exc).__name__) from None
    if type(envelope) is not list or len(envelope) != 6:
        raise DecodeError("schema", "envelope must be a list of 6")
    version, raw_type, txid, sender_key, flags, body = envelope
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise DecodeError("version")
    msg_type = _TYPES.get(raw_type) if type(raw_type) is int else None
    if msg_type is None:
        raise DecodeError("type")
    _bytes(txid, TXID_BYTES, "txid")
    _bytes(sender_key, PUBLIC_KEY_BYTES, "sender key")
    _int(flags, 0, 255, "flags")
    message = _decode_body(msg_type, body)
    sender_id = auth.verify(sender_key, payload, signature)
    if sender_id is None:
        raise DecodeError("signature")
    return Envelope(txid, sender_id, sender_key, flags, message)


def is_request(message: Message) -> bool:
    return message.TYPE in _REQUEST_TYPES
