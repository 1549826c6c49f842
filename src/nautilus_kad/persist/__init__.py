"""Persistence under a data directory: records in SQLite, the node's key file, the routing
table and the records this node publishes.

This is the one part of the library besides the drivers that does file I/O, so it lives
outside the sans-I/O :mod:`nautilus_kad.core`; :class:`SqliteStore` implements the core's
:class:`~nautilus_kad.core.storage.RecordStore` protocol and the engine never knows the
difference.
"""

from .datadir import DataDir, DataDirLockedError
from .sqlite_store import SqliteStore

__all__ = ["DataDir", "DataDirLockedError", "SqliteStore"]
