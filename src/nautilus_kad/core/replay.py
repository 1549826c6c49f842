"""The replay filter of signed requests, in flat arrays.

Signed requests carry no counter (sessions do): a node remembers the signature of every signed
request it served for ``window`` seconds and drops an exact replay. That is a few hundred
signatures in every node (a thousand-node network), tens of thousands under a flood. In a
dict of int → float each costs about 100 bytes (a 64-bit int object, a float object and the
dict's slot); here it costs about 40, in three arrays and no object per signature:

* a FIFO of (key, time) in insertion order, which is time order: ``_keys`` and ``_times``,
  read from ``_head`` on (entries before it are gone, and a removed entry in the middle has
  time ``-inf``);
* an open-addressing index (linear probing) from key to FIFO position: ``_slots``, with
  ``EMPTY`` and ``GONE`` (a tombstone) markers, rebuilt from the live entries when it fills
  up or the FIFO's dead prefix grows long.

The key is Python's ``hash`` of the signature bytes: SipHash under the process's secret
seed, so a sender cannot grind signatures whose keys crowd one probe chain (an unkeyed index
would let it make each lookup walk the whole table). Two different signatures share a key
with odds of 2**-64, as with the 64-bit signature prefix the dict used.

Behaviour is exactly that of the dict it replaces: a signature seen within ``window`` seconds
is refused; an older one is remembered anew; past ``capacity`` the oldest goes first; expired
ones are forgotten a few times per window.
"""

from __future__ import annotations

from array import array

EMPTY = -1
GONE = -2
_INITIAL_SLOTS = 8
_MIN_DEAD_PREFIX = 64
_NEG_INF = float("-inf")


class ReplayFilter:
    """Recently seen signed requests, by their signature, so an exact replay is dropped.

    Signed requests carry no counter (sessions do): within ``window`` seconds a replay is
    recognised here; after it, a replayed STORE fails its write token (tokens live at most two
    rotation periods, which is what ``window`` should cover) and a replayed PING or FIND is a
    harmless, amplification-limited repeat. At most ``capacity`` signatures are kept (oldest
    forgotten first).
    """

    __slots__ = (
        "_count",
        "_head",
        "_keys",
        "_mask",
        "_next_sweep",
        "_slots",
        "_times",
        "_used",
        "capacity",
        "window",
    )

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self._next_sweep = 0.0
        self._keys = array("q")
        self._times = array("d")
        self._head = 0
        self._count = 0
        """Live entries."""
        self._slots = array("i", [EMPTY]) * _INITIAL_SLOTS
        self._mask = _INITIAL_SLOTS - 1
        self._used = 0
        """Slots not EMPTY (live entries and tombstones)."""

    def __len__(self) -> int:
        return self._count

    def replayed(self, signature: bytes, now: float) -> bool:
        """True if ``signature`` was seen within the window; otherwise remember it."""
        if now >= self._next_sweep:  # forget the expired, a few times per window
            self._sweep(now - self.window)
            self._next_sweep = now + self.window / 16
        key = hash(signature)
        keys = self._keys
        times = self._times
        slots = self._slots
        mask = self._mask
        index = key & mask
        position = slots[index]
        while position != EMPTY:
            if position >= 0 and keys[position] == key:
                if now - times[position] <= self.window:
                    return True
                # Seen before the window: remembered anew, at the end (the slot is reused).
                times[position] = _NEG_INF
                self._count -= 1
                break
            index = (index + 1) & mask
            position = slots[index]
        else:
            self._used += 1
        slots[index] = len(keys)
        keys.append(key)
        times.append(now)
        self._count += 1
        if self._count > self.capacity:
            self._evict_oldest()
        if 2 * self._used > len(slots) or (
            self._head > _MIN_DEAD_PREFIX and 2 * self._head > len(keys)
        ):
            self._rebuild()
        return False

    def _find(self, key: int, position: int) -> int:
        """The index slot that holds FIFO ``position`` (whose key is ``key``)."""
        slots = self._slots
        mask = self._mask
        index = key & mask
        while slots[index] != position:
            index = (index + 1) & mask
        return index

    def _remove_head(self) -> None:
        """Forget the live entry at the head of the FIFO."""
        head = self._head
        self._slots[self._find(self._keys[head], head)] = GONE
        self._times[head] = _NEG_INF
        self._count -= 1
        self._head = head + 1

    def _sweep(self, cutoff: float) -> None:
        """Forget every entry at the head older than ``cutoff`` (the FIFO is in time order;
        entries removed earlier are skipped)."""
        times = self._times
        end = len(times)
        head = start = self._head
        expired = 0
        while head < end:
            seen_at = times[head]
            if seen_at >= cutoff:
                break
            expired += seen_at != _NEG_INF
            head += 1
        if not expired:
            self._head = head
            return
        if 4 * expired >= self._count or expired > 64:
            # Many at once (the usual case: a sixteenth of a window's worth): start afresh
            # from the live entries rather than look each one up.
            self._head = head
            self._count -= expired
            self._rebuild()
            return
        keys = self._keys
        slots = self._slots
        mask = self._mask
        for position in range(start, head):
            if times[position] != _NEG_INF:
                index = keys[position] & mask
                while slots[index] != position:
                    index = (index + 1) & mask
                slots[index] = GONE
                times[position] = _NEG_INF
        self._head = head
        self._count -= expired

    def _evict_oldest(self) -> None:
        times = self._times
        while times[self._head] == _NEG_INF:
            self._head += 1
        self._remove_head()

    def _rebuild(self) -> None:
        """Keep only the live entries, in order, and index them afresh (at most a quarter
        full, so the next rebuild is as many insertions away as there are entries)."""
        keys = self._keys
        times = self._times
        live = [i for i in range(self._head, len(keys)) if times[i] != _NEG_INF]
        self._keys = array("q", [keys[i] for i in live])
        self._times = array("d", [times[i] for i in live])
        self._head = 0
        size = _INITIAL_SLOTS
        while size < 4 * len(live):
            size *= 2
        slots = self._slots = array("i", [EMPTY]) * size
        mask = self._mask = size - 1
        for position, key in enumerate(self._keys):
            index = key & mask
            while slots[index] != EMPTY:
                index = (index + 1) & mask
            slots[index] = position
        self._used = len(live)
        self._count = len(live)
