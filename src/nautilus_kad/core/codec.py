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

from typing import Any

import msgpack

from .auth import Authenticator
from .bodies import MAX_ERROR_TEXT, _decode_body, _encode_body
from .config import MAX_DATAGRAM
from .errors import DecodeError
from .fields import (
    ContactMemo,
    EncodeError,
    _bytes,
    _decode_address,
    _encode_address,
    _int,
    _list,
    pack_ip,
    unpack_ip,
)

__all__ = [
    "MAX_CONTACTS",
    "PROTOCOL_VERSION",
    "TOKEN_MAX_BYTES",
    "EncodeError",
    "decode_datagram",
    "decode_session_datagram",
    "encode_message",
    "encode_session_message",
    "is_request",
    "pack_ip",
    "parse_session_header",
    "unpack_ip",
]
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from .limits import (
    PROTOCOL_VERSION,
    TOKEN_MAX_BYTES,
    TXID_BYTES,
)
from .messages import (
    Envelope,
    Message,
    MessageType,
    Nodes,
    new_envelope,
)
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
_unpackb = msgpack.unpackb


def _unpack(data: bytes) -> Any:
    """``msgpack.unpackb`` within :data:`_UNPACK_LIMITS`, passed as literal keywords: a
    ``functools.partial`` holding them merges them into a new dict on every call, and this
    runs once per datagram received."""
    return _unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_str_len=MAX_ERROR_TEXT * 4,
        max_bin_len=MAX_DATAGRAM,
        max_array_len=MAX_CONTACTS,
        max_map_len=0,
        max_ext_len=0,
    )


_pack = msgpack.Packer(use_bin_type=True).pack
"""One packer for every datagram: ``msgpack.packb`` builds a new one per call. Packing holds
no state between calls (``autoreset``), and the core runs on one thread."""
_MIN_DATAGRAM = SIGNATURE_BYTES + 1 + 2 + TXID_BYTES + PUBLIC_KEY_BYTES
_REQUEST_TYPES = frozenset(t for t in MessageType if t.is_request)
_TYPES: dict[int, MessageType] = {int(t): t for t in MessageType}


_ARRAY_OF_8 = _pack([None] * 8)[:1]
_EMPTY_BIN = _pack(b"")


def _pack_nodes_memo(head: list[Any], message: Nodes, memo: ContactMemo) -> bytes:
    """``_pack(head + [NODES body])`` with the contacts packed by the memo: the body's
    contact list is its last element and the body the list's last, so the packed empty list
    (one byte, ``0x90``) at the very end is replaced by the memo's bytes for the contacts.
    msgpack packs an array as its header then each element: the same bytes."""
    head.append([_encode_address(message.observed), message.token, []])
    packed: bytes = _pack(head)
    return packed[:-1] + memo.pack(message.contacts)


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
    memo = auth.contacts if type(message) is Nodes else None
    while True:
        if memo is not None:
            head = [PROTOCOL_VERSION, int(message.TYPE), txid, auth.identity.public_key, flags]
            payload = _pack_nodes_memo(head, message, memo)  # type: ignore[arg-type]
            if extended:  # six elements become eight: the handshake and the empty pad
                handshake_field = None if handshake is None else _encode_handshake(handshake)
                payload = _ARRAY_OF_8 + payload[1:] + _pack(handshake_field) + _EMPTY_BIN
        else:
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
            payload = _pack(fields)
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
    memo: ContactMemo | None = None,
) -> bytes:
    """Frame ``message`` as a session datagram, sealed with the session's next counter.

    NODES answers are trimmed to fit like signed ones; nothing else is ever too large (a
    session datagram's overhead is smaller than a signed envelope's).
    """
    if len(txid) != TXID_BYTES:
        raise EncodeError("txid must be 8 bytes")
    limit = min(max_size, MAX_DATAGRAM) - HEADER_BYTES - TAG_BYTES
    while True:
        if memo is not None and type(message) is Nodes:
            plaintext = _pack_nodes_memo([int(message.TYPE), txid, flags], message, memo)
        else:
            plaintext = _pack([int(message.TYPE), txid, flags, _encode_body(message)])
        if len(plaintext) <= limit:
            return session.seal(plaintext)
        if isinstance(message, Nodes) and message.contacts:
            message = Nodes(message.observed, message.token, message.contacts[:-1])
            continue
        raise EncodeError(f"{message.TYPE.name} does not fit a session datagram")


# --- decoding --------------------------------------------------------------------------


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
    size = len(data)
    if size > MAX_DATAGRAM:
        raise DecodeError("oversize")
    if size < _MIN_DATAGRAM:
        raise DecodeError("undersize")
    payload = data[:-SIGNATURE_BYTES]
    signature = data[-SIGNATURE_BYTES:]
    try:
        envelope = _unpack(payload)
    except Exception as exc:  # the C parser raises several unrelated types on garbage
        raise DecodeError("msgpack", type(exc).__name__) from None
    if type(envelope) is not list:
        raise DecodeError("schema", "envelope must be a list of 6 or 8")
    items = len(envelope)
    if items == 6:
        version, raw_type, txid, sender_key, flags, body = envelope
    elif items == 8:
        version, raw_type, txid, sender_key, flags, body = envelope[:6]
    else:
        raise DecodeError("schema", "envelope must be a list of 6 or 8")
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
    message = _decode_body(msg_type, body, auth.contacts)
    handshake = None
    if items == 8:
        handshake = _decode_handshake(envelope[6], msg_type.is_request)
        if type(envelope[7]) is not bytes:
            raise DecodeError("schema", "padding must be bytes")
    sender_id = auth.verify(sender_key, payload, signature)
    if sender_id is None:
        raise DecodeError("signature")
    return new_envelope(txid, sender_id, sender_key, flags, message, handshake)


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


def decode_session_datagram(
    data: bytes, session: Session, counter: int, now: float, memo: ContactMemo | None = None
) -> Envelope:
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
    message = _decode_body(msg_type, body, memo)
    return new_envelope(txid, session.peer_id, session.peer_key, flags, message, None, session)


def is_request(message: Message) -> bool:
    return message.TYPE in _REQUEST_TYPES
