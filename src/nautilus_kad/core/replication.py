"""Replica bookkeeping: which records a node holds and when each is due for republishing.

Pure data structures for :class:`~nautilus_kad.core.engine.KadEngine` (DESIGN §7); the
engine decides what to send. Two pieces:

* :class:`HeldKeys` — the keys a node holds, sorted by XOR distance from its own id. A peer
  that joins or dies can only matter for the records it is (or was) among the k closest to;
  the keys sharing a long prefix with our id are exactly a prefix of this order, so the engine
  skips them in one bisection when the part of the table nearer to us than the peer already
  holds k nodes (see :meth:`~nautilus_kad.core.handoff.Scans._start_at`).
* :class:`RepublishSchedule` — one heap of next-republish times, so a timer tick costs
  O(due · log n) instead of a scan of every record. Entries are re-armed lazily: receiving a
  record again does not touch the heap; when its time comes the engine sees the newer
  receipt and pushes the timer back (the Kademlia optimisation: of the k holders of a record
  only the first whose timer fires republishes, and that resets the others).
"""

from __future__ import annotations

import bisect
import heapq
import math

from .ids import NodeId


class HeldKeys:
    """Keys in XOR order around one id: O(log n) membership, insertion by memmove."""

    __slots__ = ("_distances", "_own")

    def __init__(self, own_id: NodeId) -> None:
        self._own = int(own_id)
        self._distances: list[int] = []

    def __len__(self) -> int:
        return len(self._distances)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        d = key ^ self._own
        i = bisect.bisect_left(self._distances, d)
        return i < len(self._distances) and self._distances[i] == d

    def add(self, key: NodeId) -> bool:
        """Insert ``key``; False when it was there already."""
        d = key ^ self._own
        distances = self._distances
        i = bisect.bisect_left(distances, d)
        if i < len(distances) and distances[i] == d:
            return False
        distances.insert(i, d)
        return True

    def discard(self, key: NodeId) -> bool:
        d = key ^ self._own
        distances = self._distances
        i = bisect.bisect_left(distances, d)
        if i < len(distances) and distances[i] == d:
            del distances[i]
            return True
        return False

    def from_distance(self, start: int, limit: int) -> list[NodeId]:
        """Up to ``limit`` keys at XOR distance ``>= start`` from our id, nearest first."""
        distances = self._distances
        i = bisect.bisect_left(distances, start)
        own = self._own
        return [NodeId(d ^ own) for d in distances[i : i + limit]]

    def all(self) -> list[NodeId]:
        own = self._own
        return [NodeId(d ^ own) for d in self._distances]


class DueState:
    """When one held record is next due, and why."""

    __slots__ = (
        "base",
        "due",
        "last_repair",
        "regular",
        "repair_after",
        "repair_deaths",
        "repair_full",
        "shortfalls",
    )

    def __init__(self, regular: float, base: float) -> None:
        self.regular = regular
        """The next regular republish."""
        self.due = regular
        """When the timer fires: the regular time, or sooner for a repair."""
        self.base = base
        """The record's ``stored_at`` when the timer was armed: a later receipt means another
        holder republished it meanwhile, so this node may skip its turn."""
        self.repair_after: float | None = None
        """Set when a holder was found dead: repair even if fresh, unless the record arrived
        again after this time (another holder repaired it first)."""
        self.repair_deaths = 0
        """Holders found dead since the last repair: as many nodes moved up into the k
        closest."""
        self.repair_full = False
        """The repair must be a full republish (the last one reached fewer than k nodes),
        not a top-up from the routing table."""
        self.shortfalls = 0
        """Republishes in a row that reached fewer than k nodes (sets the retry backoff)."""
        self.last_repair = -math.inf
        """When this node last ran a repair of the record."""


class RepublishSchedule:
    """Per-key deadlines in one heap with lazy deletion."""

    __slots__ = ("_heap", "_seq", "_state")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, NodeId]] = []
        self._state: dict[NodeId, DueState] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._state)

    def get(self, key: NodeId) -> DueState | None:
        return self._state.get(key)

    def arm(self, key: NodeId, regular: float, base: float) -> DueState:
        """(Re)arm ``key``'s regular republish at ``regular``; clears a pending repair."""
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = DueState(regular, base)
        else:
            state.regular = state.due = regular
            state.base = base
            state.repair_after = None
            state.repair_deaths = 0
            state.repair_full = False
        self._push(regular, key)
        return state

    def request_repair(
        self,
        key: NodeId,
        now: float,
        due: float,
        cooldown: float = 0.0,
        *,
        full: bool = False,
        death: bool = False,
    ) -> bool:
        """Repair ``key`` by ``due`` even if fresh, but not sooner than ``cooldown`` after
        this node's last repair of it; False when not scheduled (not held)."""
        state = self._state.get(key)
        if state is None:
            return False
        due = max(due, state.last_repair + cooldown)
        if state.repair_after is None:
            state.repair_after = now
        state.repair_full = state.repair_full or full
        state.repair_deaths += death
        if due < state.due:
            state.due = due
            self._push(due, key)
        return True

    def repair_done(self, key: NodeId) -> None:
        """The repair ran (or was not needed): back to the regular deadline."""
        state = self._state.get(key)
        if state is None:
            return
        state.repair_after = None
        state.repair_deaths = 0
        state.repair_full = False
        state.due = state.regular
        self._push(state.regular, key)

    def forget(self, key: NodeId) -> None:
        self._state.pop(key, None)

    def next_deadline(self) -> float:
        heap = self._heap
        state = self._state
        # Drop superseded entries so the deadline we report is a real one.
        while heap:
            due, _, key = heap[0]
            entry = state.get(key)
            if entry is not None and entry.due == due:
                return due
            heapq.heappop(heap)
        return math.inf

    def pop_due(self, now: float) -> list[tuple[NodeId, DueState]]:
        """Every key whose deadline has come (each once), earliest first."""
        heap = self._heap
        state = self._state
        out: list[tuple[NodeId, DueState]] = []
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            entry = state.get(key)
            if entry is not None and entry.due == due:
                entry.due = math.inf  # not scheduled until the engine re-arms it
                out.append((key, entry))
        return out

    def _push(self, due: float, key: NodeId) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))


def among_k_closest(own_distance: int, known: int, farthest: int, k: int) -> bool:
    """The one rule for "are we among the k closest to a key": fewer than ``k`` other nodes
    are known (``known``), or we are closer (``own_distance``) than the farthest of the k
    others (``farthest``, its distance to the key; ignored when ``known`` < ``k``).

    Put, republish, the republish skip and the repair top-up all ask it; what differs is
    only which others they count: the nodes a lookup found (that gave a write token, for a
    put), or the live nodes of our routing table."""
    return known < k or own_distance < farthest
