"""Stored records: their kinds, validation and conflict rules.

A record is what a STORE carries and a FIND_VALUE returns. Three kinds exist (DESIGN §7):

* **open** — any key, last writer wins by the publisher's timestamp; nothing is authenticated.
* **immutable** — the key is SHA-256 of the value, so the value proves itself: every storer and
  every reader checks the hash.
* **signed mutable** — the key is SHA-256(owner public key ‖ salt); the owner signs
  ``DOMAIN ‖ len(salt) ‖ salt ‖ seq (8 bytes, big-endian) ‖ value`` with Ed25519 — plain
  concatenation, never re-encoded msgpack, so the signed bytes do not depend on an encoder.
  Storers keep only the highest sequence number, refuse an equal sequence number with a
  different value, and support compare-and-swap on the sequence number they hold.

Validation (:func:`validate_record`) runs on every STORE a node serves and on every value a
lookup receives; :func:`check_replace` decides what a storer does with a record under a key it
already holds.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

from .auth import verify_signature
from .config import KadConfig
from .errors import (
    BadSignatureError,
    CasMismatchError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
    ValueTooLargeError,
)
from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity
from .ids import NodeId
from .limits import MAX_SALT_BYTES, MAX_SEQ, VALUE_LIMITS

SIGNED_RECORD_DOMAIN = b"nautilus-kad/signed-record/v1\0"
"""Prefix of every signed record's signature input: a signature made for anything else (a
datagram, another protocol) can never pass for a record signature."""


class RecordKind(enum.IntEnum):
    OPEN = 0
    IMMUTABLE = 1
    SIGNED = 2


@dataclass(frozen=True, slots=True)
class Record:
    """A value stored under a 256-bit key.

    ``timestamp_ms`` is the publisher's clock at publication (milliseconds): the last-writer-wins
    order of *open* records; the other kinds carry 0 (it is not on their wire form). ``ttl`` is
    the lifetime in seconds the publisher asks for; storers cap it. ``owner``, ``salt``, ``seq``
    and ``signature`` belong to signed records and are empty or 0 for the other kinds.
    """

    key: NodeId
    value: bytes
    timestamp_ms: int
    ttl: int
    kind: RecordKind = RecordKind.OPEN
    owner: bytes = b""
    salt: bytes = b""
    seq: int = 0
    signature: bytes = b""

    def supersedes(self, other: Record) -> bool:
        """Whether ``self`` should replace ``other`` under the same key.

        Open records: the newer timestamp wins; equal timestamps fall back to comparing values
        so every storer reaches the same verdict whatever order the copies arrive in. Signed
        records: the higher sequence number wins (equal ones by value, for the same reason).
        Immutable records never replace each other (same key, same value). A record of an
        authenticated kind replaces an open one, never the reverse.
        The same publication with a longer TTL (its publisher republished it to keep it
        alive) wins last.
        """
        if self.kind is not other.kind:
            return other.kind is RecordKind.OPEN
        if self.kind is RecordKind.SIGNED:
            if self.seq != other.seq:
                return self.seq > other.seq
            return self.value > other.value
        if self.kind is RecordKind.IMMUTABLE:
            return False
        if self.timestamp_ms != other.timestamp_ms:
            return self.timestamp_ms > other.timestamp_ms
        if self.value != other.value:
            return self.value > other.value
        return self.ttl > other.ttl

    @property
    def published_at(self) -> float:
        """The publisher's clock at publication, in seconds."""
        return self.timestamp_ms / 1000

    def same_content(self, other: Record) -> bool:
        """Whether both carry the same data (the storer only refreshes its copy)."""
        if self.kind is not other.kind or self.value != other.value:
            return False
        if self.kind is RecordKind.SIGNED:
            return self.seq == other.seq
        if self.kind is RecordKind.OPEN:
            # a longer TTL is a republish by the publisher: it replaces the copy
            return self.timestamp_ms == other.timestamp_ms and self.ttl == other.ttl
        return True


RECORD_OVERHEAD = 64
"""Bytes a stored record costs beyond its variable fields (key, integers, bookkeeping)."""


def record_size(record: Record) -> int:
    """What ``record`` counts against the store's byte limits: its variable-length fields
    plus a fixed overhead, so that ``max_store_bytes`` bounds memory and disk together with
    ``max_records`` whatever mix of sizes a flood sends."""
    return (
        len(record.value)
        + len(record.owner)
        + len(record.salt)
        + len(record.signature)
        + RECORD_OVERHEAD
    )


def record_expiry(record: Record, now: float, config: KadConfig) -> float:
    """When a node that receives ``record`` at ``now`` lets it go.

    A record lives ``ttl`` seconds from its *publication*, not from its arrival: holders
    republish it every hour, and counting from arrival would keep it alive for ever. Its
    publisher extends the TTL when it republishes. A storer never keeps anything longer than
    ``max_record_ttl`` from now.

    Immutable and signed records carry no publication time on the wire (``timestamp_ms`` is
    0): their TTL counts from their arrival, so a holder that passes one on sends the time it
    has left (:func:`for_transfer`), never the publisher's full TTL.
    """
    if record.timestamp_ms == 0:
        return now + min(record.ttl, config.max_record_ttl)
    return min(record.published_at + record.ttl, now + config.max_record_ttl)


def for_transfer(record: Record, expires_at: float, now: float) -> Record:
    """``record`` as a holder sends it on (replication STORE, FIND_VALUE answer).

    A record without a publication time (immutable, signed) travels with the whole seconds
    its holder has left as its TTL: holders republish every hour, and a full TTL from every
    arrival would keep it alive for ever after its publisher stopped republishing it. Rounded
    down, so hops never add time. Open records count from their publication time already.
    """
    if record.timestamp_ms != 0:
        return record
    left = max(1, int(expires_at - now))
    if left >= record.ttl:
        return record
    return replace(record, ttl=left)


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A valid signed mutable record, as :meth:`Node.get_signed` returns it.

    ``name`` is the salt: the owner's name for the record (``key`` = SHA-256(owner ‖ name)).
    """

    key: NodeId
    owner: bytes
    name: bytes
    seq: int
    value: bytes
    signature: bytes

    @classmethod
    def from_record(cls, record: Record) -> SignedRecord:
        if record.kind is not RecordKind.SIGNED:
            raise ValidationError("not a signed record")
        return cls(
            record.key, record.owner, record.salt, record.seq, record.value, record.signature
        )


# --- keys --------------------------------------------------------------------------------


def immutable_key(value: bytes) -> NodeId:
    """The key of an immutable record: SHA-256 of its value."""
    return NodeId(int.from_bytes(hashlib.sha256(value).digest(), "big"))


def signed_key(owner: bytes, salt: bytes) -> NodeId:
    """The key of a signed record: SHA-256(owner public key ‖ salt)."""
    return NodeId(int.from_bytes(hashlib.sha256(owner + salt).digest(), "big"))


def signing_input(salt: bytes, seq: int, value: bytes) -> bytes:
    """The exact bytes a signed record's owner signs."""
    if len(salt) > MAX_SALT_BYTES:
        raise ValidationError(f"salt of {len(salt)} bytes exceeds {MAX_SALT_BYTES} bytes")
    if not 0 <= seq <= MAX_SEQ:
        raise ValidationError("sequence number must fit 64 bits")
    return SIGNED_RECORD_DOMAIN + bytes((len(salt),)) + salt + seq.to_bytes(8, "big") + value


# --- construction --------------------------------------------------------------------------


def make_immutable(value: bytes, ttl: int) -> Record:
    """An immutable record for ``value`` (its key is SHA-256(value))."""
    return Record(immutable_key(value), bytes(value), 0, ttl, RecordKind.IMMUTABLE)


def make_signed(identity: Identity, salt: bytes, value: bytes, seq: int, ttl: int) -> Record:
    """A signed record of ``identity`` under ``salt``, signed for sequence number ``seq``."""
    value = bytes(value)
    salt = bytes(salt)
    signature = identity.sign(signing_input(salt, seq, value))
    return Record(
        signed_key(identity.public_key, salt),
        value,
        0,
        ttl,
        RecordKind.SIGNED,
        owner=identity.public_key,
        salt=salt,
        seq=seq,
        signature=signature,
    )


# --- rules ---------------------------------------------------------------------------------


def value_limit(kind: RecordKind, config: KadConfig) -> int:
    """The largest value a record of ``kind`` may carry under ``config``."""
    return min(config.max_value_size, VALUE_LIMITS[kind])


def validate_record(record: Record, config: KadConfig) -> None:
    """Raise :class:`ValidationError` unless ``record`` may be stored or returned.

    Checks sizes, the key (hash of the value, or of owner and salt) and the owner's signature;
    :class:`BadSignatureError` and :class:`ValueTooLargeError` are the distinct failures.
    """
    kind = record.kind
    if kind not in VALUE_LIMITS:
        raise ValidationError(f"unsupported record kind {kind!r}")
    limit = value_limit(kind, config)
    if len(record.value) > limit:
        raise ValueTooLargeError(
            f"{kind.name.lower()} value of {len(record.value)} bytes exceeds the inline limit "
            f"of {limit} bytes"
        )
    if record.ttl <= 0:
        raise ValidationError("a record needs a positive TTL")
    if record.timestamp_ms < 0:
        raise ValidationError("negative timestamp")
    if kind is RecordKind.OPEN:
        if record.owner or record.salt or record.seq or record.signature:
            raise ValidationError("an open record carries no owner, salt, seq or signature")
        return
    if record.timestamp_ms:
        raise ValidationError(f"a {kind.name.lower()} record carries no timestamp")
    if kind is RecordKind.IMMUTABLE:
        if record.owner or record.salt or record.seq or record.signature:
            raise ValidationError("an immutable record carries no owner, salt, seq or signature")
        if record.key != immutable_key(record.value):
            raise ValidationError("immutable record key is not SHA-256 of its value")
        return
    if len(record.owner) != PUBLIC_KEY_BYTES:
        raise ValidationError(f"owner key must be {PUBLIC_KEY_BYTES} bytes")
    if len(record.signature) != SIGNATURE_BYTES:
        raise BadSignatureError(f"signature must be {SIGNATURE_BYTES} bytes")
    message = signing_input(record.salt, record.seq, record.value)
    if record.key != signed_key(record.owner, record.salt):
        raise ValidationError("signed record key is not SHA-256 of owner key and salt")
    if not verify_signature(record.owner, message, record.signature):
        raise BadSignatureError("signed record signature does not verify for its owner key")


def check_replace(existing: Record | None, new: Record, expected_seq: int | None) -> bool:
    """What a storer does with a valid ``new`` record under a key holding ``existing``.

    Returns True to store ``new``, False when it carries the same data as ``existing`` (only
    refresh the copy). Raises :class:`CasMismatchError` when ``expected_seq`` (compare-and-swap)
    is older than the stored sequence number, :class:`StaleSequenceError` when a signed record is
    not newer, and :class:`RecordConflictError` for any other record that loses.

    A storer whose copy is *older* than ``expected_seq`` is merely behind (it missed a write)
    and accepts: only evidence of a newer write than the writer expected refuses a CAS.
    """
    if expected_seq is not None:
        if new.kind is not RecordKind.SIGNED:
            raise ValidationError("compare-and-swap applies to signed records only")
        if not 0 <= expected_seq < new.seq:
            raise ValidationError("a compare-and-swap must write a higher sequence number")
        if (
            existing is not None
            and existing.kind is RecordKind.SIGNED
            and (existing.seq > expected_seq)
        ):
            raise CasMismatchError(
                f"expected sequence {expected_seq}, but sequence {existing.seq} is stored"
            )
    if existing is None:
        return True
    if new.same_content(existing):
        return False
    if new.supersedes(existing):
        if (
            new.kind is RecordKind.SIGNED
            and existing.kind is RecordKind.SIGNED
            and new.seq == existing.seq
        ):
            raise StaleSequenceError(f"sequence {new.seq} is already stored with a different value")
        return True
    if new.kind is RecordKind.SIGNED and existing.kind is RecordKind.SIGNED:
        if new.seq == existing.seq:
            raise StaleSequenceError(f"sequence {new.seq} is already stored with a different value")
        raise StaleSequenceError(
            f"sequence {new.seq} is older than the stored sequence {existing.seq}"
        )
    raise RecordConflictError("a newer record is stored")
