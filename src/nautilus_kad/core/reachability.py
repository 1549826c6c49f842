"""Client or server: whether this node may route, decided by probe results with hysteresis.

A node serves the DHT (enters others' routing tables, is handed out, stores records) only
once it has proof that datagrams it did not ask for reach it: a probe round succeeds when a
third node's probe arrives (see :mod:`.dialback`). Single results lie both ways (a lost probe;
a lucky hole in a filter), so the mode follows a record of rounds:

* a client becomes a server once ``probe_quorum`` of the last ``probe_window`` rounds
  succeeded;
* a server becomes a client after ``probe_failures`` failed rounds in a row, or at once when
  its external address changes (the proof was for the old address);
* a mode is kept at least ``mode_min_dwell`` (except after an address change), so random
  loss cannot flap it; a new node starts as a client and may be promoted at once;
* a new node (or one whose address changed) starts ``probe_window`` rounds at once, and
  retries inconclusive ones ``reprobe_unsure`` later until it has that many results; then a
  round follows ``reprobe_unsure`` after the last while the results do not back the mode
  yet, ``reprobe_sure`` once they do.

A fixed mode (``server`` or ``client``) never probes and never changes.

Sans-I/O: the engine asks :meth:`wanted`, starts that many rounds, and reports each as
:meth:`record` (success or failure) or :meth:`inconclusive` (no probe could be arranged, or
the probe came from an address that proves nothing). Rounds carry the :attr:`epoch` they were
started in; results of an earlier epoch (before an address change) are ignored.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass

from .fifo import Fifo
from .natconfig import NatConfig


class Mode(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class ModeChange:
    old: Mode
    new: Mode
    reason: str
    at: float


class ReachabilityTracker:
    """The mode of one node and the probe record behind it."""

    def __init__(self, config: NatConfig, now: float, fixed: Mode | None = None) -> None:
        self.config = config
        self.fixed = fixed
        self.mode = fixed if fixed is not None else Mode.CLIENT
        self.since = now
        """When the current mode began."""
        self.epoch = 0
        self.results: Fifo[tuple[float, bool]] = Fifo(maxlen=config.probe_window)
        """(when, success) of the last rounds of this epoch, oldest first (an empty deque
        is a 760-byte block, and a node of fixed mode never records a round)."""
        self.failures_in_row = 0
        self.in_flight = 0
        self.stats: Counter[str] = Counter()
        self._changed = False
        """Whether the mode ever changed (the dwell does not hold a new node back)."""
        self._burst = 0 if fixed is not None else config.probe_window
        self.next_probe_at = math.inf if fixed is not None else now

    # --- scheduling ----------------------------------------------------------------------

    def wanted(self, now: float) -> int:
        """How many rounds to start now."""
        if self.fixed is not None or now < self.next_probe_at:
            return 0
        room = self.config.max_rounds_in_flight - self.in_flight
        if self._burst:
            return max(0, min(self._burst, room))
        return 1 if self.in_flight == 0 else 0

    def started(self, count: int, now: float) -> int:
        """``count`` rounds were started; returns the epoch to report their results with."""
        self.in_flight += count
        self._burst = max(0, self._burst - count)
        self.stats["rounds.started"] += count
        if self._burst == 0:
            self.next_probe_at = math.inf  # the next is scheduled when these end
        return self.epoch

    def unavailable(self, now: float) -> None:
        """Rounds were wanted but no helper could be asked: try again shortly."""
        self.next_probe_at = now + self.config.probe_timeout

    def wait_until(self, when: float) -> None:
        """Rounds are wanted but cannot prove anything before ``when``: start them then."""
        self.next_probe_at = when

    def timer(self) -> float:
        """When :meth:`wanted` next becomes non-zero (inf: after a result)."""
        return self.next_probe_at

    # --- results -------------------------------------------------------------------------

    def record(self, success: bool, epoch: int, now: float) -> ModeChange | None:
        """A round of ``epoch`` ended: its probe arrived (``success``) or not."""
        if epoch != self.epoch:
            self.stats["rounds.stale"] += 1
            return None
        self.in_flight = max(0, self.in_flight - 1)
        self.results.append((now, success))
        self.stats["rounds.succeeded" if success else "rounds.failed"] += 1
        self.failures_in_row = 0 if success else self.failures_in_row + 1
        change = self.evaluate(now)
        self._schedule(now)
        return change

    def inconclusive(self, epoch: int, now: float) -> None:
        """A round of ``epoch`` proved nothing either way."""
        if epoch != self.epoch:
            self.stats["rounds.stale"] += 1
            return
        self.in_flight = max(0, self.in_flight - 1)
        self.stats["rounds.inconclusive"] += 1
        if len(self.results) + self.in_flight + self._burst < self.config.probe_window:
            self._burst += 1  # until the record is full, a wasted round is tried again
        if self.in_flight == 0:
            self.next_probe_at = now + self.config.reprobe_unsure

    def evaluate(self, now: float) -> ModeChange | None:
        """Change the mode if the record and the dwell time allow it."""
        if self.fixed is not None:
            return None
        cfg = self.config
        if self._changed and now - self.since < cfg.mode_min_dwell:
            return None
        if self.mode is Mode.CLIENT and self.successes >= cfg.probe_quorum:
            return self._switch(Mode.SERVER, "probes succeeded", now)
        if self.mode is Mode.SERVER and self.failures_in_row >= cfg.probe_failures:
            return self._switch(Mode.CLIENT, "probes failed", now)
        return None

    def address_changed(self, now: float) -> ModeChange | None:
        """Our external address changed: the old proof is void. A server becomes a client
        at once (whatever the dwell), and a new burst of rounds starts."""
        if self.fixed is not None:
            return None
        self.epoch += 1
        self.results.clear()
        self.failures_in_row = 0
        self.in_flight = 0
        self._burst = self.config.probe_window
        self.next_probe_at = now
        if self.mode is Mode.SERVER:
            return self._switch(Mode.CLIENT, "external address changed", now)
        return None

    # --- views ---------------------------------------------------------------------------

    @property
    def successes(self) -> int:
        return sum(1 for _, ok in self.results if ok)

    @property
    def sure(self) -> bool:
        """Whether the record backs the current mode (then probing slows down)."""
        cfg = self.config
        if self.mode is Mode.SERVER:
            last = list(self.results)[-cfg.probe_quorum :]
            return len(last) == cfg.probe_quorum and all(ok for _, ok in last)
        return self.failures_in_row >= cfg.probe_failures

    def _schedule(self, now: float) -> None:
        if self.in_flight == 0 and self._burst == 0:
            cfg = self.config
            self.next_probe_at = now + (cfg.reprobe_sure if self.sure else cfg.reprobe_unsure)

    def _switch(self, mode: Mode, reason: str, now: float) -> ModeChange:
        change = ModeChange(self.mode, mode, reason, now)
        self.mode = mode
        self.since = now
        self._changed = True
        self.stats["mode.changes"] += 1
        return change
