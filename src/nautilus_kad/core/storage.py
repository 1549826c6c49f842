"""Where a node keeps the records it is responsible for.

:class:`RecordStore` is the interface the engine talks to; :class:`MemoryStore` is the default.
A persistent store (:class:`nautilus_kad.persist.SqliteStore`, under a data dir) implements the
same protocol outside ``core`` (it does file I/O). The engine owns the rules (validation,
conflicts, quotas, replication); a store only keeps and expires what it is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .ids import NodeId
from .records import Record


@dataclass(slots=True)
class StoredRecord:
    record: Record
    expires_at: float
    stored_at: float


class RecordStore(Protocol):
    def get(self, key: NodeId, now: float) -> StoredRecord | None:
        """The live record under ``key``, if any (expired ones are invisible)."""

    def put(self, record: Record, now: float, expires_at: float) -> None:
        """Keep ``record`` until ``expires_at``, replacing whatever was under its key."""

    def remove(self, key: NodeId) -> bool:
        """Forget ``key``; whether it was there."""

    def expire(self, now: float) -> list[NodeId]:
        """Drop every record whose time is up; returns their keys."""

    def keys(self) -> Iterator[NodeId]:
        """Every key held (expired ones may still be listed until the next sweep)."""

    def __len__(self) -> int:
        """How many records are held."""

    def close(self) -> None:
        """Release what the store holds open (a no-op in memory)."""


class MemoryStore:
    """Records in a dict: the default when no data directory is configured."""

    def __init__(self) -> None:
        self._records: dict[NodeId, StoredRecord] = {}

    def get(self, key: NodeId, now: float) -> StoredRecord | None:
        stored = self._records.get(key)
        if stored is None or stored.expires_at <= now:
            return None
        return stored

    def put(self, record: Record, now: float, expires_at: float) -> None:
        self._records[record.key] = StoredRecord(record, expires_at, now)

    def remove(self, key: NodeId) -> bool:
        return self._records.pop(key, None) is not None

    def expire(self, now: float) -> list[NodeId]:
        dead = [key for key, stored in self._records.items() if stored.expires_at <= now]
        for key in dead:
            del self._records[key]
        return dead

    def keys(self) -> Iterator[NodeId]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> None:
        pass
