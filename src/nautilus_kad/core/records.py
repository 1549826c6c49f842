"""Stored records: their kinds, validation and conflict rules.

A record is what a STORE carries and a FIND_VALUE returns. Only *open* records exist so far
(any key, last writer wins by the publisher's timestamp); the ``kind`` field is on the wire from
the start so immutable and signed records can join without a format change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .config import KadConfig
from .errors import ValidationError, ValueTooLargeError
from .ids import NodeId


class RecordKind(enum.IntEnum):
    OPEN = 0


@dataclass(frozen=True, slots=True)
class Record:
    """A value stored under a 256-bit key.

    ``timestamp_ms`` is the publisher's clock at publication (milliseconds): the last-writer-wins
    order. ``ttl`` is the lifetime in seconds the publisher asks for; storers cap it.
    """

    key: NodeId
    value: bytes
    timestamp_ms: int
    ttl: int
    kind: RecordKind = RecordKind.OPEN

    def supersedes(self, other: Record) -> bool:
        """Whether ``self`` should replace ``other`` under the same key.

        Newer timestamp wins; equal timestamps fall back to comparing values so every storer
        reaches the same verdict whatever order the copies arrive in. The same publication
        with a longer TTL (its publisher republished it to keep it alive) wins last.
        """
        if self.timestamp_ms != other.timestamp_ms:
            return self.timestamp_ms > other.timestamp_ms
        if self.value != other.value:
            return self.value > other.value
        return self.ttl > other.ttl

    @property
    def published_at(self) -> float:
        """The publisher's clock at publication, in seconds."""
        return self.timestamp_ms / 1000


def record_expiry(record: Record, now: float, config: KadConfig) -> float:
    """When a node that receives ``record`` at ``now`` lets it go.

    A record lives ``ttl`` seconds from its *publication*, not from its arrival: holders
    republish it every hour, and counting from arrival would keep it alive for ever. Its
    publisher extends the TTL when it republishes. A storer never keeps anything longer than
    ``max_record_ttl`` from now.
    """
    return min(record.published_at + record.ttl, now + config.max_record_ttl)


def validate_record(record: Record, config: KadConfig) -> None:
    """Raise :class:`ValidationError` unless ``record`` may be stored or returned."""
    if record.kind is not RecordKind.OPEN:
        raise ValidationError(f"unsupported record kind {record.kind!r}")
    if len(record.value) > config.max_value_size:
        raise ValueTooLargeError(
            f"value of {len(record.value)} bytes exceeds the inline limit of "
            f"{config.max_value_size} bytes"
        )
    if record.ttl <= 0:
        raise ValidationError("a record needs a positive TTL")
    if record.timestamp_ms < 0:
        raise ValidationError("negative timestamp")
