"""The storer's rules and its accounting: what we hold, and what it costs.

:class:`Holdings` decides whether a record may be kept (validity, clock skew, expiry,
last-writer-wins or compare-and-swap, fullness in records and bytes, per-source quotas), keeps
the byte size of every held record and the source it came from (for the quotas), and indexes
the held keys by XOR distance from our id (:class:`~.replication.HeldKeys`) for handoff and
repair scans. The record store itself stays the engine's (``ctx.store``: drivers may swap it).

It tells replication about the keys it starts or stops holding through two callables given at
construction: ``on_new_key(key, now)`` (a republish timer to arm) and ``on_dropped(key)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .context import NodeContext
from .errors import (
    BadSignatureError,
    CasMismatchError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
)
from .ids import NodeId
from .messages import ErrorCode
from .records import Record, check_replace, record_expiry, record_size, validate_record
from .replication import HeldKeys


class Holdings:
    """The records this node holds as a storer, with their sizes and sources."""

    __slots__ = (
        "_ctx",
        "_on_dropped",
        "_on_new_key",
        "_sizes",
        "_source_bytes",
        "_source_counts",
        "_sources",
        "held",
        "stored_bytes",
    )

    def __init__(
        self,
        ctx: NodeContext,
        on_new_key: Callable[[NodeId, float], None],
        on_dropped: Callable[[NodeId], None],
    ) -> None:
        self._ctx = ctx
        self._on_new_key = on_new_key
        self._on_dropped = on_dropped
        self.held = HeldKeys(ctx.node_id)
        """Every held key, ordered by XOR distance from our id."""
        self._sources: dict[NodeId, str] = {}
        """The address each record we hold first came from (for per-source quotas)."""
        self._source_counts: Counter[str] = Counter()
        self._source_bytes: Counter[str] = Counter()
        self._sizes: dict[NodeId, int] = {}
        """What each held record counts against the byte limits (records.record_size)."""
        self.stored_bytes = 0

    def load(self, now: float, on_loaded: Callable[[NodeId, float], None]) -> None:
        """Index what a persistent store already holds (a restart); ``on_loaded(key,
        stored_at)`` arms each record's republish."""
        store = self._ctx.store
        for key in list(store.keys()):
            stored = store.get(key, now)
            if stored is None:
                continue
            self.held.add(key)
            self._resize(key, record_size(stored.record))
            on_loaded(key, stored.stored_at)

    def accept(
        self,
        record: Record,
        expected_seq: int | None,
        now: float,
        *,
        validate: bool,
        source: str | None = None,
    ) -> tuple[ErrorCode | None, str]:
        """Apply the storer's rules (validity, age, conflicts, compare-and-swap, fullness,
        per-source quota) and keep ``record`` if they allow it. Returns ``(None, "")`` or the
        refusal's code and text. ``source`` is the sender's host (None: our own put)."""
        cfg = self._ctx.config
        expires_at = record_expiry(record, now, cfg)
        try:
            if validate:
                validate_record(record, cfg)
            if record.published_at > now + cfg.max_clock_skew:
                self._ctx.stats["store.rejected.future"] += 1
                return ErrorCode.INVALID_RECORD, "record timestamp is in the future"
            if expires_at <= now:
                self._ctx.stats["store.rejected.expired"] += 1
                return ErrorCode.INVALID_RECORD, "record has expired"
            existing = self._ctx.store.get(record.key, now)
            replace = check_replace(
                existing.record if existing is not None else None, record, expected_seq
            )
        except BadSignatureError as exc:
            self._ctx.stats["store.rejected.signature"] += 1
            return ErrorCode.BAD_SIGNATURE, str(exc)
        except ValidationError as exc:
            self._ctx.stats["store.rejected.invalid"] += 1
            return ErrorCode.INVALID_RECORD, str(exc)
        except CasMismatchError as exc:
            self._ctx.stats["store.rejected.cas"] += 1
            return ErrorCode.CAS_MISMATCH, str(exc)
        except StaleSequenceError as exc:
            self._ctx.stats["store.rejected.stale"] += 1
            return ErrorCode.STALE_SEQUENCE, str(exc)
        except RecordConflictError as exc:
            self._ctx.stats["store.rejected.stale"] += 1
            return ErrorCode.STALE_RECORD, str(exc)
        key = record.key
        size = record_size(record)
        if existing is not None:
            growth = size - self._sizes.get(key, size)
            if replace and growth > 0 and self.stored_bytes + growth > cfg.max_store_bytes:
                self._ctx.stats["store.rejected.full"] += 1
                return ErrorCode.STORE_FULL, f"store is full ({cfg.max_store_bytes} bytes)"
            if not replace:
                # The same record again: another holder republished it. Note the receipt
                # (it lets our own republish skip a turn); the expiry stays, unless a
                # record without a publication time comes with more time left than ours
                # (its publisher republished it: holders only ever pass on what they have).
                keep = existing.expires_at
                if record.timestamp_ms == 0 and expires_at > keep:
                    keep = expires_at
                    self._ctx.stats["store.extended"] += 1
                self._ctx.store.put(existing.record, now, keep)
                self._ctx.stats["store.refreshed"] += 1
                return None, ""
            self._ctx.store.put(record, now, expires_at)
            self._resize(key, size)
            self._ctx.stats["store.accepted"] += 1
            return None, ""
        if key in self.held:  # expired, not swept yet: it no longer counts
            self._ctx.store.remove(key)
            self.forget(key)
        # A full store, or a source over its quota, refuses *new* keys only: what is already
        # held is never evicted for a newcomer, and updates of held keys always go through.
        if len(self._ctx.store) >= cfg.max_records:
            self._ctx.stats["store.rejected.full"] += 1
            return ErrorCode.STORE_FULL, f"store is full ({cfg.max_records} records)"
        if self.stored_bytes + size > cfg.max_store_bytes:
            self._ctx.stats["store.rejected.full"] += 1
            return ErrorCode.STORE_FULL, f"store is full ({cfg.max_store_bytes} bytes)"
        if source is not None:
            if self._source_counts[source] >= cfg.max_records_per_source:
                self._ctx.stats["store.rejected.quota"] += 1
                return (
                    ErrorCode.QUOTA_EXCEEDED,
                    f"quota of {cfg.max_records_per_source} records from {source} reached",
                )
            if self._source_bytes[source] + size > cfg.max_bytes_per_source:
                self._ctx.stats["store.rejected.quota"] += 1
                return (
                    ErrorCode.QUOTA_EXCEEDED,
                    f"quota of {cfg.max_bytes_per_source} bytes from {source} reached",
                )
        self._ctx.store.put(record, now, expires_at)
        self.held.add(key)
        self._on_new_key(key, now)
        if source is not None:
            self._sources[key] = source
            self._source_counts[source] += 1
        self._resize(key, size)
        self._ctx.stats["store.accepted"] += 1
        return None, ""

    def _resize(self, key: NodeId, size: int) -> None:
        """``key`` now holds a record of ``size`` bytes (records.record_size)."""
        growth = size - self._sizes.get(key, 0)
        self._sizes[key] = size
        self.stored_bytes += growth
        source = self._sources.get(key)
        if source is not None:
            self._source_bytes[source] += growth

    def forget(self, key: NodeId) -> None:
        """``key`` left the store (expired, dropped): drop its bookkeeping."""
        self.held.discard(key)
        self._on_dropped(key)
        size = self._sizes.pop(key, 0)
        self.stored_bytes -= size
        source = self._sources.pop(key, None)
        if source is not None:
            left = self._source_counts[source] - 1
            if left > 0:
                self._source_counts[source] = left
            else:
                del self._source_counts[source]
            left_bytes = self._source_bytes[source] - size
            if left_bytes > 0:
                self._source_bytes[source] = left_bytes
            else:
                del self._source_bytes[source]

    def remove(self, key: NodeId) -> None:
        """Drop our copy of ``key`` (handed over to closer nodes)."""
        self._ctx.store.remove(key)
        self.forget(key)
