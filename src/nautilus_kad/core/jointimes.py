"""When each peer joined the routing table, kept inside the table's entry slots.

Handoff (core/handoff.py) ranks holders by how long they have been in our table; a dict of
ids to floats cost about 70 bytes per entry, so the times of peers in the table are the fourth
double of their entry's slot (core/buckets.py) and the others wait in a small side dict of the
table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .buckets import _NAN, _isnan
from .ids import NodeId

if TYPE_CHECKING:
    from .routing import RoutingTable


class JoinTimes:
    """When each peer joined the routing table (handoff ranks holders by it), with the
    semantics of the ``dict`` it replaces: a time is set when a peer is added
    (``times[id] = now``), forgotten when the peer is reported gone (:meth:`pop`), and kept
    when the table drops an entry silently (a stale entry giving way to a newcomer) or
    promotes a spare (which gets no time of its own, but finds the one it left with);
    :meth:`prune` forgets the times of peers out of the table once they outnumber it.

    The times of peers in the table are the fourth double of their entry's slot (a dict
    key and a float object are about 70 bytes per entry); the others wait in the table's
    small side dict."""

    __slots__ = ("_table",)

    def __init__(self, table: RoutingTable) -> None:
        self._table = table

    def get(self, node_id: NodeId, default: float) -> float:
        entry = self._table.get(node_id)
        if entry is not None:
            joined = entry.joined
            return default if joined is None else joined
        return self._table._left.get(node_id, default)

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, int) and not _isnan(self.get(node_id, _NAN))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._table._joined + len(self._table._left)

    def __setitem__(self, node_id: NodeId, now: float) -> None:
        table = self._table
        entry = table.get(node_id)
        if entry is None:
            table._left[node_id] = now
            return
        if entry.joined is None:
            table._joined += 1
        entry.joined = now

    def pop(self, node_id: NodeId, default: float | None = None) -> float | None:
        table = self._table
        entry = table.get(node_id)
        if entry is None:
            return table._left.pop(node_id, default)
        joined = entry.joined
        if joined is None:
            return default
        entry.joined = None
        table._joined -= 1
        return joined

    def prune(self) -> None:
        """Forget the times of peers out of the table, once there are more times than
        entries (the side dict holds no peer of the table: an entry coming back takes its
        time out of it)."""
        if len(self) > len(self._table):
            self._table._left.clear()
