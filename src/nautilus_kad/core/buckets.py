"""A routing-table bucket and its entries, stored compactly.

A 10 000-node simulation holds close to a million entries, so each entry keeps its doubles
(last seen, SRTT, RTTVAR, join time) in its bucket's ``array('d')`` instead of float objects,
and a bucket's entries and replacements are plain dicts. :class:`RttEstimator` is the
RFC 6298 arithmetic those doubles follow. The rules of the table live in
:mod:`nautilus_kad.core.routing`.
"""

from __future__ import annotations

import math
from array import array

from .ids import NodeId
from .messages import Contact


class RttEstimator:
    """Smoothed round-trip time and its variation, as TCP keeps them (RFC 6298)."""

    __slots__ = ("rttvar", "srtt")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def timeout(self, floor: float, ceiling: float) -> float | None:
        if self.srtt is None:
            return None
        return min(ceiling, max(floor, self.srtt + 4 * self.rttvar))


_NAN = math.nan
_isnan = math.isnan
_BLANK = (0.0, _NAN, 0.0, _NAN)
"""A slot's four doubles before its entry is filled in: last seen, SRTT (NaN: none yet),
RTTVAR, join time (NaN: none)."""
_WIDTH = len(_BLANK)


class Entry:
    """One routing-table entry, with its peer's round-trip estimate (:attr:`rtt`: the entry
    itself, with the :class:`RttEstimator` interface and arithmetic).

    Its four times (last seen, SRTT, RTTVAR, join time) are doubles in its bucket's
    ``array('d')``, at offset ``_at``, not float objects: four floats are 128 bytes of
    pymalloc blocks, and a 100 000-node simulation holds ten million entries. An entry that
    leaves its bucket takes a copy of its times with it (:meth:`detach`), so a caller still
    holding it reads what it read before, and its slot can be given to another entry."""

    __slots__ = ("_at", "_times", "contact", "failures")

    def __init__(self, contact: Contact, now: float, times: array[float] | None = None,
                 at: int = 0) -> None:  # fmt: skip
        self.contact = contact
        self.failures = 0
        if times is None:
            times, at = array("d", _BLANK), 0
        times[at] = now
        times[at + 1] = _NAN
        times[at + 2] = 0.0
        times[at + 3] = _NAN
        self._times = times
        self._at = at

    @property
    def rtt(self) -> Entry:
        """This entry's smoothed round-trip time and variation (RFC 6298)."""
        return self

    @property
    def is_stale(self) -> bool:
        return self.failures > 0

    @property
    def last_seen(self) -> float:
        return self._times[self._at]

    @last_seen.setter
    def last_seen(self, now: float) -> None:
        self._times[self._at] = now

    @property
    def srtt(self) -> float | None:
        srtt = self._times[self._at + 1]
        return None if _isnan(srtt) else srtt

    @property
    def rttvar(self) -> float:
        return self._times[self._at + 2]

    @property
    def joined(self) -> float | None:
        """When the peer joined the table (see :class:`JoinTimes`; None: not recorded)."""
        joined = self._times[self._at + 3]
        return None if _isnan(joined) else joined

    @joined.setter
    def joined(self, when: float | None) -> None:
        self._times[self._at + 3] = _NAN if when is None else when

    def sample(self, rtt: float) -> None:
        """:meth:`RttEstimator.sample`, on the bucket's doubles."""
        times, at = self._times, self._at
        srtt = times[at + 1]
        if _isnan(srtt):
            times[at + 1] = rtt
            times[at + 2] = rtt / 2
        else:
            times[at + 2] = 0.75 * times[at + 2] + 0.25 * abs(srtt - rtt)
            times[at + 1] = 0.875 * srtt + 0.125 * rtt

    def timeout(self, floor: float, ceiling: float) -> float | None:
        srtt = self._times[self._at + 1]
        if _isnan(srtt):
            return None
        return min(ceiling, max(floor, srtt + 4 * self._times[self._at + 2]))

    def detach(self) -> None:
        """Keep a copy of the times in the entry itself (it is leaving its bucket)."""
        at = self._at
        self._times = self._times[at : at + _WIDTH]
        self._at = 0


class KBucket:
    """Up to k entries ordered least- to most-recently seen, plus a replacement cache.

    Both are plain dicts, which keep insertion order (moving a key to the end is a pop and a
    re-insert): an ``OrderedDict`` costs about twice the memory per key, and a 10 000-node
    simulation holds a few hundred thousand keys.

    :attr:`stale` counts the entries with a failure: a request from an unknown node asks
    whether its bucket has a stale slot (:meth:`RoutingTable.has_room_for`), and a full
    bucket would otherwise be scanned for one every time."""

    __slots__ = ("entries", "free", "last_touched", "replacements", "stale", "times")

    def __init__(self, now: float) -> None:
        self.entries: dict[NodeId, Entry] = {}
        self.replacements: dict[NodeId, Contact] = {}
        self.last_touched = now
        self.stale = 0
        """Entries of :attr:`entries` whose ``failures`` is non-zero (kept by the table,
        the only writer of ``failures``)."""
        self.times: array[float] = array("d")
        """Four doubles per entry slot (see :class:`Entry`)."""
        self.free = 0
        """The free slots of :attr:`times`, as a bit mask (bit ``i``: offset ``4 * i``)."""

    def __len__(self) -> int:
        return len(self.entries)

    def slot(self) -> int:
        """The offset in :attr:`times` of a free slot (the lowest; a new one if none)."""
        free = self.free
        if free:
            low = free & -free
            self.free = free ^ low
            return _WIDTH * (low.bit_length() - 1)
        at = len(self.times)
        self.times.extend(_BLANK)
        return at

    def release(self, entry: Entry) -> None:
        """``entry`` left this bucket: it keeps its times, and its slot is free."""
        at, times = entry._at, entry._times
        entry.detach()
        if times is self.times:  # (an entry made elsewhere, as tests do, has its own)
            self.free |= 1 << (at // _WIDTH)
