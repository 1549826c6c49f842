"""A node's data directory: its key file, its database and a lock.

Layout::

    DIR/node.key        Ed25519 private key, PKCS#8 PEM, mode 0600 (the node id derives from it)
    DIR/node.sqlite3    records, published records and the routing table (WAL mode)
    DIR/lock            held (flock) while a node uses the directory; holds its pid
    DIR/api             the running daemon's API address and token (mode 0600)

Two processes on one directory would corrupt each other's view of the records, so the second
one is refused. The lock is an advisory ``flock``: the kernel drops it when the holder dies,
even by ``SIGKILL``, so a restart after a crash never finds a stale lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import KadError
from ..core.identity import Identity
from .sqlite_store import SqliteStore

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; the lock is skipped there
    fcntl = None  # type: ignore[assignment]

KEY_FILE = "node.key"
DB_FILE = "node.sqlite3"
LOCK_FILE = "lock"


class DataDirLockedError(KadError):
    """Another process is using the data directory."""


class DataDir:
    """An opened data directory (create it with ``DataDir(path)``; :meth:`close` it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KadError(f"cannot create data directory {self.path}: {exc}") from exc
        self._lock_fd: int | None = self._lock()
        self._store: SqliteStore | None = None

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    def identity(self) -> Identity:
        """The node's identity: read from the key file, created (mode 0600) on first use."""
        return Identity.load_or_create(self.key_path)

    @property
    def store(self) -> SqliteStore:
        """The database (opened on first use)."""
        if self._store is None:
            try:
                self._store = SqliteStore(self.db_path)
            except Exception as exc:
                raise KadError(f"cannot open {self.db_path}: {exc}") from exc
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> int | None:
        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder is not None else "another process"
            raise DataDirLockedError(f"data directory {self.path} is in use by {who}") from exc
        # The holder's pid, so the next one to try can say who holds it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DataDir({str(self.path)!r})"


def _read_pid(fd: int) -> int | None:
    """The pid a lock holder wrote into the lock file, if it did."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
