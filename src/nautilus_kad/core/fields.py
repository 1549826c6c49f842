"""Wire forms of the fields messages are made of: addresses, contacts, records, tokens.

The codec (:mod:`.codec`) frames whole messages; this module encodes and strictly decodes the
fields inside their bodies. Decoders check every type and length exactly (``bool`` is not an
``int`` here) and raise only :class:`~.errors.DecodeError`. Contact lists can be memoised
(:class:`ContactMemo`); by default every node decodes and encodes its own.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

import msgpack

from .errors import DecodeError
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from .ids import ID_BYTES, NodeId
from .limits import (
    MAX_SALT_BYTES,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MAX_TTL,
    TOKEN_MAX_BYTES,
    VALUE_LIMITS,
)
from .messages import Address, Contact, new_contact
from .records import Record, RecordKind


class EncodeError(ValueError):
    """Our own message does not fit the wire rules (a bug or an oversized value)."""


_id_from_int = int.__new__
"""``_id_from_int(NodeId, value)`` builds a NodeId without the range check, for values
decoded from exactly 32 bytes (always in range)."""


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


def _encode_contacts(contacts: tuple[Contact, ...]) -> list[list[Any]]:
    """The wire form ``[id(32), ip(4|16), port]`` of every contact of a NODES list (the
    encoder's hot loop).

    Nothing is cached across calls: a process-wide cache of wire forms would be state that
    the nodes of one process share and separate processes could not."""
    return [[c.node_id.to_bytes(ID_BYTES, "big"), pack_ip(c.host), c.port] for c in contacts]


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


def _decode_contacts(values: list[Any]) -> tuple[Contact, ...]:
    """Every contact of a NODES list, each ``[id(32), ip(4|16), port]`` (the decoder's hot
    loop): each field checked in that order, a schema error on the first bad one."""
    contacts: list[Contact] = []
    append = contacts.append
    for value in values:
        if type(value) is not list or len(value) != 3:
            raise DecodeError("schema", "contact must be a list of 3")
        raw_id, host_raw, port = value
        if type(raw_id) is not bytes or len(raw_id) != ID_BYTES:
            raise DecodeError("schema", f"contact id must be {ID_BYTES} bytes")
        if type(host_raw) is not bytes:
            raise DecodeError("schema", "address must be bytes")
        try:
            host = unpack_ip(host_raw)
        except ValueError as exc:
            raise DecodeError("schema", "address must be 4 or 16 bytes") from exc
        if type(port) is not int or not 1 <= port <= 65535:
            raise DecodeError("schema", "contact port out of range")
        append(new_contact(_id_from_int(NodeId, int.from_bytes(raw_id, "big")), host, port))
    return tuple(contacts)


_pack = msgpack.Packer(use_bin_type=True).pack


def array_header(length: int) -> bytes:
    """The msgpack header of an array of ``length`` (< 65 536) elements."""
    if length < 16:
        return bytes((0x90 | length,))
    return b"\xdc" + length.to_bytes(2, "big")


class ContactMemo:
    """Wire forms of contacts encoded before, and contacts decoded before, both ways by node
    id (bounded; cleared when full). A NODES answer names the same peers over and over:
    reusing their objects saves most of the encoding and decoding.

    Off by default (each node builds its own contacts: a memo shared by the nodes of one
    process would be state separate processes could not share). The simulator gives one
    memo to all its nodes (:class:`~nautilus_kad.sim.auth.SimKeyring`), so that a large
    simulation runs fast; contacts are immutable and the memo only ever returns one equal
    to what decoding would build, so this changes no behaviour. The simulator's routing
    tables keep the contacts :meth:`intern` returns: one object per peer for the whole
    simulation instead of one per table entry."""

    __slots__ = ("_decoded", "_encoded", "_interned", "size")

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._encoded: dict[int, tuple[Contact, bytes]] = {}
        self._decoded: dict[bytes, tuple[bytes, int, Contact]] = {}
        self._interned: dict[int, Contact] = {}

    def intern(self, contact: Contact) -> Contact:
        """The contact first interned with this id and address (equal to ``contact``), or
        ``contact`` itself, remembered from now on (bounded: ``4 * size`` ids, enough for
        every peer of a 100 000-node simulation; cleared when full)."""
        interned = self._interned
        known = interned.get(contact.node_id)
        if known is not None and known.port == contact.port and known.host == contact.host:
            return known
        if len(interned) >= 4 * self.size:
            interned.clear()
        interned[contact.node_id] = contact
        return contact

    def __len__(self) -> int:
        return len(self._encoded) + len(self._decoded)

    def pack(self, contacts: tuple[Contact, ...]) -> bytes:
        """The msgpack bytes of :func:`_encode_contacts`, memoised: each contact's packed
        form is kept, so a NODES answer packs as an array header and a join (the codec
        splices these bytes where the list would have been packed: the same bytes)."""
        cache = self._encoded
        parts: list[bytes] = [array_header(len(contacts))]
        append = parts.append
        for c in contacts:
            hit = cache.get(c.node_id)
            if hit is not None:
                known = hit[0]
                # The same object, or an equal one (another node's entry for the same peer).
                if known is c or (known.port == c.port and known.host == c.host):
                    append(hit[1])
                    continue
            append(self._remember(c))
        return b"".join(parts)

    def contact(self, node_id: NodeId, host: str, port: int) -> Contact:
        """``new_contact(node_id, host, port)``, or the equal contact the memo holds: a
        contact decoded afresh is the one packed before for that id and address when there
        is one (contacts are immutable values; only their identity changes), so
        :meth:`pack` finds that very object. (Taking every answering peer's contact from
        here too cut instructions but cost CPU time at 2 000 and 10 000 nodes: a look-up
        in a large shared dict per answer, where a fresh contact is in cache.)"""
        hit = self._encoded.get(node_id)
        if hit is not None:
            known = hit[0]
            if known.port == port and known.host == host:
                return known
        contact = new_contact(node_id, host, port)
        self._remember(contact)
        return contact

    def _remember(self, contact: Contact) -> bytes:
        """Pack ``contact`` and keep it (with its wire form) as the memo's for its id."""
        wire: bytes = _pack(
            [contact.node_id.to_bytes(ID_BYTES, "big"), pack_ip(contact.host), contact.port]
        )
        cache = self._encoded
        if len(cache) >= self.size:
            cache.clear()
        cache[contact.node_id] = (contact, wire)
        return wire

    def decode(self, values: list[Any]) -> tuple[Contact, ...]:
        """:func:`_decode_contacts`, memoised: same checks in the same order, same errors.

        The common case first: every contact is one decoded before, ``[id, ip, port]``
        with the same id, address bytes and an int port (a memo key is always a valid id,
        and a value is only kept for address bytes and a port that passed the checks).
        Anything else (a new contact, or no list of 3: msgpack gives lists, bytes, str,
        numbers, None, which unpack into three names only as a list or a 3-byte or
        3-character string, and those never match a key) is decoded by :meth:`_decode`,
        which runs every check in order and raises as :func:`_decode_contacts` does."""
        get = self._decoded.get
        contacts: list[Contact] = []
        append = contacts.append
        try:
            for raw_id, host_raw, port in values:
                known = get(raw_id)
                if (
                    known is None
                    or known[0] != host_raw
                    or known[1] != port
                    or type(port) is not int
                ):
                    return self._decode(values)
                append(known[2])
        except (TypeError, ValueError):  # not three items, or an unhashable id
            return self._decode(values)
        return tuple(contacts)

    def _decode(self, values: list[Any]) -> tuple[Contact, ...]:
        contacts: list[Contact] = []
        append = contacts.append
        cache = self._decoded
        for value in values:
            if type(value) is not list or len(value) != 3:
                raise DecodeError("schema", "contact must be a list of 3")
            raw_id, host_raw, port = value
            if type(raw_id) is not bytes:
                raise DecodeError("schema", f"contact id must be {ID_BYTES} bytes")
            known = cache.get(raw_id)  # (every id in the memo has the right length)
            if (
                known is not None
                and known[0] == host_raw
                and type(port) is int
                and known[1] == port
            ):
                append(known[2])  # the same id, address bytes and port were valid before
                continue
            if len(raw_id) != ID_BYTES:
                raise DecodeError("schema", f"contact id must be {ID_BYTES} bytes")
            if type(host_raw) is not bytes:
                raise DecodeError("schema", "address must be bytes")
            try:
                host = unpack_ip(host_raw)
            except ValueError as exc:
                raise DecodeError("schema", "address must be 4 or 16 bytes") from exc
            if type(port) is not int or not 1 <= port <= 65535:
                raise DecodeError("schema", "contact port out of range")
            contact = self.contact(_id_from_int(NodeId, int.from_bytes(raw_id, "big")), host, port)
            if len(cache) >= self.size:
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
