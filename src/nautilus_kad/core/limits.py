"""Size limits of the wire format, derived once from the 1200-byte datagram budget.

Every inline value limit is computed here, and only here, by packing the largest datagram that
can carry a record of each kind: a VALUE answer (IPv6 observed address, port 65535, the longest
token, every integer at its widest msgpack encoding) and a STORE request (longest token and a
compare-and-swap sequence number), signed. What is left of :data:`~.config.MAX_DATAGRAM` is
the value budget. Open and immutable records are then capped at the round
:data:`~.config.MAX_VALUE_SIZE` (1000 bytes); a signed record also carries its owner's public
key, salt, sequence number and signature, so its limit is lower by exactly their size.

The codec refuses (encoding) and rejects (decoding) values over these limits, and
``tests/test_record_kinds.py`` proves that a maximal STORE and VALUE of every kind fits, in
the signed envelope and in a session datagram, while one byte more does not fit a signed
record's budget.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .config import MAX_DATAGRAM, MAX_VALUE_SIZE
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES

PROTOCOL_VERSION = 1
TXID_BYTES = 8
TOKEN_MAX_BYTES = 8
"""Write tokens are 8-byte truncated HMACs (engine.TOKEN_BYTES); a longer bound would let a
maximum-size VALUE answer overflow the datagram budget."""
MAX_SALT_BYTES = 64
"""Longest salt (the name part of a signed record's key)."""
MAX_SEQ = 2**64 - 1
MAX_TTL = 2**32 - 1
MAX_TIMESTAMP_MS = 2**63 - 1

# Record kinds on the wire (mirrors RecordKind in records.py, which imports this module).
_OPEN, _IMMUTABLE, _SIGNED = 0, 1, 2
_VALUE_TYPE = 0x83
_STORE_TYPE = 0x04
_PROBE = 256
"""Probe value length: any length from 256 to 65535 has the same 3-byte bin16 header."""


def record_fields(kind: int, value: bytes) -> list[Any]:
    """The widest wire form of a record of ``kind`` holding ``value`` (see codec.py)."""
    key = b"\xff" * 32
    if kind == _OPEN:
        return [kind, key, value, MAX_TIMESTAMP_MS, MAX_TTL]
    if kind == _IMMUTABLE:
        return [kind, key, value, MAX_TTL]
    return [
        kind,
        key,
        value,
        MAX_TTL,
        b"\xff" * PUBLIC_KEY_BYTES,
        b"\xff" * MAX_SALT_BYTES,
        MAX_SEQ,
        b"\xff" * SIGNATURE_BYTES,
    ]


def _signed_size(msg_type: int, body: list[Any]) -> int:
    envelope = [PROTOCOL_VERSION, msg_type, b"\0" * TXID_BYTES, b"\0" * PUBLIC_KEY_BYTES, 255, body]
    return len(msgpack.packb(envelope, use_bin_type=True)) + SIGNATURE_BYTES


MAX_PING_BYTES = _signed_size(0x01, [])
"""The largest signed PING (no offer, no padding): what checking a stranger's address costs
its amplification budget."""


def worst_case_sizes(kind: int, value_size: int) -> tuple[int, int]:
    """Sizes of the largest signed (VALUE, STORE) datagrams carrying such a record."""
    value = b"\xff" * value_size
    observed = [b"\xff" * 16, 65535]
    token = b"\xff" * TOKEN_MAX_BYTES
    answer = _signed_size(_VALUE_TYPE, [observed, token, record_fields(kind, value)])
    store = _signed_size(_STORE_TYPE, [record_fields(kind, value), token, MAX_SEQ])
    return answer, store


def value_budget(kind: int) -> int:
    """The largest value of ``kind`` whose every datagram fits in :data:`MAX_DATAGRAM`."""
    overhead = max(worst_case_sizes(kind, _PROBE)) - _PROBE
    budget = MAX_DATAGRAM - overhead
    if budget < _PROBE:  # pragma: no cover - would mean a broken framing change
        raise AssertionError("the datagram budget leaves no room for values")
    return budget


OPEN_VALUE_LIMIT = min(MAX_VALUE_SIZE, value_budget(_OPEN))
IMMUTABLE_VALUE_LIMIT = min(MAX_VALUE_SIZE, value_budget(_IMMUTABLE))
SIGNED_VALUE_LIMIT = min(MAX_VALUE_SIZE, value_budget(_SIGNED))
if OPEN_VALUE_LIMIT < MAX_VALUE_SIZE or IMMUTABLE_VALUE_LIMIT < MAX_VALUE_SIZE:
    raise AssertionError(  # pragma: no cover - guards the documented 1000-byte promise
        f"open and immutable values must fit {MAX_VALUE_SIZE} bytes in a datagram"
    )

VALUE_LIMITS: dict[int, int] = {
    _OPEN: OPEN_VALUE_LIMIT,
    _IMMUTABLE: IMMUTABLE_VALUE_LIMIT,
    _SIGNED: SIGNED_VALUE_LIMIT,
}
"""Inline value limit by record kind (``RecordKind`` is an ``int``)."""
