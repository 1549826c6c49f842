"""The wire format: a versioned, signed msgpack envelope and session datagrams, decoded strictly.

Signed datagram = ``msgpack([version, type, txid, sender_pubkey, flags, body]) ‖ signature``
where the 64-byte signature covers exactly the preceding bytes. A handshake or padding makes it
``msgpack([version, type, txid, sender_pubkey, flags, body, handshake | nil, padding])``: the
handshake is ``[ephemeral_key(32), session_id, [ip, port]]`` in a request (an offer, with the
address the request was sent to) and ``[ephemeral_key(32), session_id]`` in a response (an
accept); padding is a byte string that lets a first-contact request earn a full answer under
the anti-amplification rule. Session datagrams start with ``0xC1`` (see :mod:`.session`) and
carry ``msgpack([type, txid, flags, body])`` sealed with the session's AEAD.

Everything from the network is untrusted: sizes are bounded before parsing, every field's type
and length is checked exactly (``bool`` is not an ``int`` here), and the signature (or the
session's AEAD tag) is checked after the cheap structural checks and before anything reaches
the engine. The only exception the decoders raise is :class:`DecodeError`.
"""

from __future__ import annotations

import functools
import ipaddress
from functools import lru_cache
from typing import Any

import msgpack

from .auth import Authenticator
from .config import MAX_DATAGRAM
from .errors import DecodeError
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from .ids import ID_BYTES, NodeId
from .limits import (
    MAX_SALT_BYTES,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MAX_TTL,
    PROTOCOL_VERSION,
    TOKEN_MAX_BYTES,
    TXID_BYTES,
    VALUE_LIMITS,
)
from .messages import (
    Address,
    Contact,
    Dialback,
    DialbackReply,
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
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    Store,
    Stored,
    Value,
)
from .natwire import NAT_TYPES, decode_nat_body, encode_nat_body
from .records import Record, RecordKind
from .session import (
    EPHEMERAL_KEY_BYTES,
    HEADER,
    HEADER_BYTES,
    KIND_DATA,
    MIN_DATA_DATAGRAM,
    SESSION_MAGIC,
    TAG_BYTES,
    Handshake,
    HandshakeAccept,
    HandshakeOffer,
    Session,
)

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
_unpack = functools.partial(msgpack.unpackb, **_UNPACK_LIMITS)
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
    """Wire forms by kind (limits.py packs the same layouts to size the value budget)::

    OPEN      [0, key, value, timestamp_ms, ttl]
    IMMUTABLE [1, key, value, ttl]
    SIGNED    [2, key, value, ttl, owner(32), salt(<=64), seq(uint64), signature(64)]
    """
    kind = record.kind
    if len(record.value) > VALUE_LIMITS[kind]:
        raise EncodeError(
            f"{kind.name} value of {len(record.value)} bytes exceeds the "
            f"{VALUE_LIMITS[kind]}-byte inline limit"
        )
    if kind is RecordKind.OPEN:
        return [0, record.key.to_bytes32(), record.value, record.timestamp_ms, record.ttl]
    if kind is RecordKind.IMMUTABLE:
        return [1, record.key.to_bytes32(), record.value, record.ttl]
    return [
        2,
        record.key.to_bytes32(),
        record.value,
        record.ttl,
        record.owner,
        record.salt,
        record.seq,
        record.signature,
    ]


_WIRE_CACHE_SIZE = 65536
_contact_wire: dict[int, tuple[Contact, list[Any]]] = {}
"""Wire forms of recently encoded contacts by node id, with the contact they were made from. A
NODES answer names the same peers over and over; reusing their wire form saves most of the
encoding. Cleared when full."""


def _encode_contacts(contacts: tuple[Contact, ...]) -> list[list[Any]]:
    """:func:`_encode_contact` over a NODES list (the encoder's hot loop), memoised."""
    cache = _contact_wire
    out: list[list[Any]] = []
    append = out.append
    for c in contacts:
        hit = cache.get(c.node_id)
        if hit is not None:
            known = hit[0]
            # The same object, or an equal one (another node's entry for the same peer).
            if known is c or (known.port == c.port and known.host == c.host):
                append(hit[1])
                continue
        wire = [c.node_id.to_bytes(ID_BYTES, "big"), pack_ip(c.host), c.port]
        if len(cache) >= _WIRE_CACHE_SIZE:
            cache.clear()
        cache[c.node_id] = (c, wire)
        append(wire)
    return out


def _encode_body(message: Message) -> list[Any]:
    match message:
        case Ping():
            return []
        case FindNode(target=target):
            return [target.to_bytes32()]
        case FindValue(key=key):
            return [key.to_bytes32()]
        case Store(record=record, token=token, expected_seq=expected_seq):
            if expected_seq is None:
                return [_encode_record(record), token]
            return [_encode_record(record), token, expected_seq]
        case Pong(observed=observed):
            return [_encode_address(observed)]
        case Nodes(observed=observed, token=token, contacts=contacts):
            return [_encode_address(observed), token, _encode_contacts(contacts)]
        case Value(observed=observed, token=token, record=record):
            return [_encode_address(observed), token, _encode_record(record)]
        case Stored(observed=observed):
            return [_encode_address(observed)]
        case Error(observed=observed, code=code, message=text):
            return [_encode_address(observed), int(code), text[:MAX_ERROR_TEXT]]
        case Dialback() | ProbeRelay() | Probe() | DialbackReply() | ProbeRelayReply():
            return encode_nat_body(message)
    raise EncodeError(f"not a message: {message!r}")


def _encode_handshake(handshake: Handshake) -> list[Any]:
    if isinstance(handshake, HandshakeOffer):
        return [handshake.ephemeral, handshake.sid, _encode_address(handshake.to)]
    return [handshake.ephemeral, handshake.sid]


def encode_message(
    message: Message,
    txid: bytes,
    auth: Authenticator,
    flags: int = 0,
    *,
    handshake: Handshake | None = None,
    pad_to: int = 0,
    max_size: int = MAX_DATAGRAM,
) -> bytes:
    """Frame, sign and return one datagram.

    ``handshake`` adds a session offer (requests) or accept (responses); ``pad_to`` pads the
    datagram to at least that many bytes. A NODES answer that would not fit in ``max_size``
    (at most :data:`MAX_DATAGRAM`) is trimmed from its far end; any other oversized message
    raises :class:`EncodeError`.
    """
    if len(txid) != TXID_BYTES:
        raise EncodeError("txid must be 8 bytes")
    if handshake is not None and isinstance(handshake, HandshakeOffer) != is_request(message):
        raise EncodeError("offers go in requests, accepts in responses")
    limit = min(max_size, MAX_DATAGRAM)
    extended = handshake is not None or pad_to > 0
    while True:
        fields = [
            PROTOCOL_VERSION,
            int(message.TYPE),
            txid,
            auth.identity.public_key,
            flags,
            _encode_body(message),
        ]
        if extended:
            fields.append(None if handshake is None else _encode_handshake(handshake))
            fields.append(b"")
        payload = msgpack.packb(fields, use_bin_type=True)
        size = len(payload) + SIGNATURE_BYTES
        if size < pad_to:
            # The empty pad is the last element, packed as bin8 ``c4 00``: grow it in place
            # (its header becomes bin16's 3 bytes past 255 bytes of padding).
            missing = pad_to - size
            if missing <= 255:
                payload = payload[:-1] + bytes((missing,)) + bytes(missing)
            else:
                payload = payload[:-2] + b"\xc5" + (missing - 1).to_bytes(2, "big")
                payload += bytes(missing - 1)
            size = len(payload) + SIGNATURE_BYTES
        if size <= limit:
            return bytes(payload) + auth.sign(payload)
        if isinstance(message, Nodes) and message.contacts:
            message = Nodes(message.observed, message.token, message.contacts[:-1])
            continue
        raise EncodeError(
            f"{message.TYPE.name} needs {size} bytes, more than the {limit}-byte limit"
        )


def encode_session_message(
    message: Message,
    txid: bytes,
    session: Session,
    flags: int = 0,
    *,
    max_size: int = MAX_DATAGRAM,
) -> bytes:
    """Frame ``message`` as a session datagram, sealed with the session's next counter.

    NODES answers are trimmed to fit like signed ones; nothing else is ever too large (a
    session datagram's overhead is smaller than a signed envelope's).
    """
    if len(txid) != TXID_BYTES:
        raise EncodeError("txid must be 8 bytes")
    limit = min(max_size, MAX_DATAGRAM) - HEADER_BYTES - TAG_BYTES
    while True:
        plaintext = msgpack.packb(
            [int(message.TYPE), txid, flags, _encode_body(message)], use_bin_type=True
        )
        if len(plaintext) <= limit:
            return session.seal(plaintext)
        if isinstance(message, Nodes) and message.contacts:
            message = Nodes(message.observed, message.token, message.contacts[:-1])
            continue
        raise EncodeError(f"{message.TYPE.name} does not fit a session datagram")


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
        raise DecodeError("schema", f"token must be at most {TOKEN_MAX_BYTES} bytes")
    return value


_RECORD_FIELDS = {RecordKind.OPEN: 5, RecordKind.IMMUTABLE: 4, RecordKind.SIGNED: 8}


def _decode_record(value: Any) -> Record:
    if type(value) is not list or not value:
        raise DecodeError("schema", "record must be a non-empty list")
    try:
        kind = RecordKind(_int(value[0], 0, 255, "record kind"))
    except ValueError as exc:
        raise DecodeError("schema", "unknown record kind") from exc
    _list(value, _RECORD_FIELDS[kind], f"{kind.name} record")
    raw_key, data = value[1], value[2]
    if type(data) is not bytes:
        raise DecodeError("schema", "record value must be bytes")
    if len(data) > VALUE_LIMITS[kind]:
        raise DecodeError("schema", "record value over the inline limit")
    key = NodeId.from_bytes_exact(_bytes(raw_key, ID_BYTES, "record key"))
    if kind is RecordKind.OPEN:
        return Record(
            key=key,
            value=data,
            timestamp_ms=_int(value[3], 0, MAX_TIMESTAMP_MS, "timestamp"),
            ttl=_int(value[4], 1, MAX_TTL, "ttl"),
        )
    ttl = _int(value[3], 1, MAX_TTL, "ttl")
    if kind is RecordKind.IMMUTABLE:
        return Record(key, data, 0, ttl, RecordKind.IMMUTABLE)
    salt = value[5]
    if type(salt) is not bytes or len(salt) > MAX_SALT_BYTES:
        raise DecodeError("schema", f"salt must be at most {MAX_SALT_BYTES} bytes")
    return Record(
        key,
        data,
        0,
        ttl,
        RecordKind.SIGNED,
        owner=_bytes(value[4], PUBLIC_KEY_BYTES, "owner key"),
        salt=salt,
        seq=_int(value[6], 0, MAX_SEQ, "sequence number"),
        signature=_bytes(value[7], SIGNATURE_BYTES, "record signature"),
    )


def _decode_body(msg_type: MessageType, body: Any) -> Message:
    if type(body) is not list:
        raise DecodeError("schema", "body must be a list")
    if msg_type in NAT_TYPES:
        return decode_nat_body(msg_type, body)
    match msg_type:
        case MessageType.PING:
            _list(body, 0, "PING body")
            return Ping()
        case MessageType.FIND_NODE:
            (raw,) = _list(body, 1, "FIND_NODE body")
            raw = _bytes(raw, ID_BYTES, "target")
            return FindNode(_id_from_int(NodeId, int.from_bytes(raw, "big")))
        case MessageType.FIND_VALUE:
            (raw,) = _list(body, 1, "FIND_VALUE body")
            raw = _bytes(raw, ID_BYTES, "key")
            return FindValue(_id_from_int(NodeId, int.from_bytes(raw, "big")))
        case MessageType.STORE:
            if len(body) == 3:
                record, token, expected = body
                return Store(
                    _decode_record(record),
                    _decode_token(token),
                    _int(expected, 0, MAX_SEQ, "expected sequence"),
                )
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


def _decode_handshake(value: Any, request: bool) -> Handshake | None:
    if value is None:
        return None
    if request:
        ephemeral, sid, to = _list(value, 3, "handshake offer")
        return HandshakeOffer(
            _bytes(ephemeral, EPHEMERAL_KEY_BYTES, "ephemeral key"),
            _int(sid, 1, 2**32 - 1, "session id"),
            _decode_address(to),
        )
    ephemeral, sid = _list(value, 2, "handshake accept")
    return HandshakeAccept(
        _bytes(ephemeral, EPHEMERAL_KEY_BYTES, "ephemeral key"),
        _int(sid, 1, 2**32 - 1, "session id"),
    )


def decode_datagram(data: bytes, auth: Authenticator) -> Envelope:
    """Parse, bound-check and authenticate one signed datagram.

    Raises :class:`DecodeError` (with a metric-friendly ``reason``) for anything invalid;
    never any other exception. Session datagrams go through
    :func:`decode_session_datagram` instead.
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
    if type(envelope) is not list or len(envelope) not in (6, 8):
        raise DecodeError("schema", "envelope must be a list of 6 or 8")
    version, raw_type, txid, sender_key, flags, body = envelope[:6]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise DecodeError("version")
    msg_type = _TYPES.get(raw_type) if type(raw_type) is int else None
    if msg_type is None:
        raise DecodeError("type")
    if not (
        type(txid) is bytes
        and len(txid) == TXID_BYTES
        and type(sender_key) is bytes
        and len(sender_key) == PUBLIC_KEY_BYTES
        and type(flags) is int
        and 0 <= flags <= 255
    ):  # the common case passes in one test; otherwise raise exactly as the checks do
        _bytes(txid, TXID_BYTES, "txid")
        _bytes(sender_key, PUBLIC_KEY_BYTES, "sender key")
        _int(flags, 0, 255, "flags")
    message = _decode_body(msg_type, body)
    handshake = None
    if len(envelope) == 8:
        handshake = _decode_handshake(envelope[6], msg_type.is_request)
        if type(envelope[7]) is not bytes:
            raise DecodeError("schema", "padding must be bytes")
    sender_id = auth.verify(sender_key, payload, signature)
    if sender_id is None:
        raise DecodeError("signature")
    return Envelope(txid, sender_id, sender_key, flags, message, handshake=handshake)


def parse_session_header(data: bytes) -> tuple[int, int, int]:
    """``(kind, session id, counter)`` of a datagram starting with :data:`SESSION_MAGIC`."""
    if len(data) > MAX_DATAGRAM:
        raise DecodeError("oversize")
    if len(data) < HEADER_BYTES:
        raise DecodeError("undersize")
    magic, kind, sid, counter = HEADER.unpack_from(data)
    if magic != SESSION_MAGIC:
        raise DecodeError("schema", "not a session datagram")
    return kind, sid, counter


def decode_session_datagram(data: bytes, session: Session, counter: int, now: float) -> Envelope:
    """Authenticate (replay window, then AEAD) and strictly decode a session data datagram
    addressed to ``session``; raises :class:`DecodeError` for anything invalid."""
    if len(data) < MIN_DATA_DATAGRAM or data[1] != KIND_DATA:
        raise DecodeError("session.schema")
    if session.replayed(counter):
        raise DecodeError("session.replay")
    plaintext = session.open(data, counter, now)
    if plaintext is None:
        raise DecodeError("session.auth")
    try:
        inner = _unpack(plaintext)
    except Exception as exc:  # the C parser raises several unrelated types on garbage
        raise DecodeError("msgpack", type(exc).__name__) from None
    if type(inner) is not list or len(inner) != 4:
        raise DecodeError("schema", "session payload must be a list of 4")
    raw_type, txid, flags, body = inner
    msg_type = _TYPES.get(raw_type) if type(raw_type) is int else None
    if msg_type is None:
        raise DecodeError("type")
    if type(txid) is not bytes or len(txid) != TXID_BYTES:
        raise DecodeError("schema", "txid must be 8 bytes")
    if type(flags) is not int or not 0 <= flags <= 255:
        raise DecodeError("schema", "flags out of range")
    message = _decode_body(msg_type, body)
    return Envelope(txid, session.peer_id, session.peer_key, flags, message, None, session)


def is_request(message: Message) -> bool:
    return message.TYPE in _REQUEST_TYPES
