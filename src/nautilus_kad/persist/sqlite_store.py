"""Records (and the node's other durable state) in one SQLite database.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. Every write is its own
committed transaction, appended to the write-ahead log before the call returns; the log lives in
the operating system's page cache until a checkpoint, so a process that is killed (even with
``SIGKILL``) loses nothing that was committed. Only a power loss or kernel crash can lose the
last transactions before the next fsync (``synchronous="FULL"`` closes that gap at the cost of
an fsync per write). That is the right trade for a DHT: a record lost to a power cut is still
held by k - 1 other nodes and comes back with the next republish.

The key set is mirrored in memory, so ``len()`` and lookups of keys we do not hold (most
FIND_VALUE requests) never touch the disk.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..core.ids import NodeId
from ..core.messages import Contact
from ..core.records import Record, RecordKind
from ..core.storage import StoredRecord

_log = logging.getLogger("nautilus_kad.persist")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    stored_at REAL NOT NULL,
    owner BLOB NOT NULL DEFAULT x'',
    salt BLOB NOT NULL DEFAULT x'',
    seq INTEGER NOT NULL DEFAULT 0,
    signature BLOB NOT NULL DEFAULT x''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires_at);
CREATE TABLE IF NOT EXISTS published (
    key BLOB PRIMARY KEY,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    ttl INTEGER NOT NULL,
    base_ttl INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peers (
    node_id BLOB PRIMARY KEY,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    last_seen REAL NOT NULL
) WITHOUT ROWID;
"""


class SqliteStore:
    """A :class:`~nautilus_kad.core.storage.RecordStore` in an SQLite file (WAL mode)."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self._db: sqlite3.Connection | None = sqlite3.connect(str(self.path), isolation_level=None)
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{self.path}: cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{self.path} was written by a newer nautilus-kad (schema {version})"
            )
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._keys: set[NodeId] = {
            NodeId.from_bytes_exact(raw) for (raw,) in db.execute("SELECT key FROM records")
        }

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- RecordStore -------------------------------------------------------------------

    def get(self, key: NodeId, now: float) -> StoredRecord | None:
        if key not in self._keys:
            return None
        row = self._conn.execute(
            "SELECT kind, value, timestamp_ms, ttl, expires_at, stored_at, owner, salt, seq, "
            "signature FROM records WHERE key = ?",
            (key.to_bytes32(),),
        ).fetchone()
        if row is None:
            return None
        kind, value, timestamp_ms, ttl, expires_at, stored_at, owner, salt, seq, sig = row
        if expires_at <= now:
            return None
        try:
            record = Record(
                key,
                bytes(value),
                timestamp_ms,
                ttl,
                RecordKind(kind),
                bytes(owner),
                bytes(salt),
                int(seq),
                bytes(sig),
            )
        except ValueError:
            return None
        return StoredRecord(record, expires_at, stored_at)

    def put(self, record: Record, now: float, expires_at: float) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.key.to_bytes32(),
                int(record.kind),
                record.value,
                record.timestamp_ms,
                record.ttl,
                expires_at,
                now,
                record.owner,
                record.salt,
                record.seq,
                record.signature,
            ),
        )
        self._keys.add(record.key)

    def remove(self, key: NodeId) -> bool:
        if key not in self._keys:
            return False
        self._conn.execute("DELETE FROM records WHERE key = ?", (key.to_bytes32(),))
        self._keys.discard(key)
        return True

    def expire(self, now: float) -> list[NodeId]:
        with self._transaction() as db:
            rows = db.execute("SELECT key FROM records WHERE expires_at <= ?", (now,)).fetchall()
            if rows:
                db.execute("DELETE FROM records WHERE expires_at <= ?", (now,))
        dead = [NodeId.from_bytes_exact(raw) for (raw,) in rows]
        self._keys.difference_update(dead)
        return dead

    def keys(self) -> Iterator[NodeId]:
        return iter(list(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- the node's other durable state ------------------------------------------------

    def save_peers(self, peers: Iterable[tuple[Contact, float]]) -> None:
        """Replace the saved routing table with ``(contact, last_seen)`` pairs."""
        rows = [(c.node_id.to_bytes32(), c.host, c.port, seen) for c, seen in peers]
        with self._transaction() as db:
            db.execute("DELETE FROM peers")
            db.executemany("INSERT OR REPLACE INTO peers VALUES (?, ?, ?, ?)", rows)

    def load_peers(self, limit: int | None = None) -> list[Contact]:
        """Saved peers, most recently seen first."""
        sql = "SELECT node_id, host, port FROM peers ORDER BY last_seen DESC"
        rows = self._conn.execute(sql).fetchall()
        out: list[Contact] = []
        for raw, host, port in rows:
            try:
                out.append(Contact(NodeId.from_bytes_exact(raw), str(host), int(port)))
            except (ValueError, TypeError):
                _log.warning("skipping a malformed saved peer in %s", self.path)
            if limit is not None and len(out) >= limit:
                break
        return out

    def save_published(self, published: Iterable[tuple[Record, int]]) -> None:
        """Replace the saved list of records this node publishes."""
        rows = [
            (r.key.to_bytes32(), int(r.kind), r.value, r.timestamp_ms, r.ttl, base_ttl)
            for r, base_ttl in published
        ]
        with self._transaction() as db:
            db.execute("DELETE FROM published")
            db.executemany("INSERT OR REPLACE INTO published VALUES (?, ?, ?, ?, ?, ?)", rows)

    def add_published(self, record: Record, base_ttl: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO published VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.key.to_bytes32(),
                int(record.kind),
                record.value,
                record.timestamp_ms,
                record.ttl,
                base_ttl,
            ),
        )

    def load_published(self) -> list[tuple[Record, int]]:
        out: list[tuple[Record, int]] = []
        for raw, kind, value, timestamp_ms, ttl, base_ttl in self._conn.execute(
            "SELECT key, kind, value, timestamp_ms, ttl, base_ttl FROM published"
        ):
            try:
                record = Record(
                    NodeId.from_bytes_exact(raw), bytes(value), timestamp_ms, ttl, RecordKind(kind)
                )
            except (ValueError, TypeError):
                _log.warning("skipping a malformed published record in %s", self.path)
                continue
            out.append((record, int(base_ttl)))
        return out

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, {len(self._keys)} records)"
