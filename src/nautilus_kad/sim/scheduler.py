"""A discrete-event scheduler with a virtual clock.

Callbacks wait in a heap ordered by ``(time, sequence number)``: earlier times first, and
callbacks due at the same time run in the order they were scheduled (FIFO), which keeps every
run reproducible. Time only moves when the next callback is taken from the heap, so an hour
of protocol time costs exactly the work done in it, never a wall-clock sleep.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any


class Handle:
    """A scheduled callback that can still be cancelled."""

    __slots__ = ("_args", "_fn", "cancelled", "when")

    def __init__(self, when: float, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self._fn = fn
        self._args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the callback (a no-op once it ran)."""
        self.cancelled = True

    def _run(self) -> None:
        if not self.cancelled:
            self.cancelled = True  # ran: a later cancel() changes nothing
            self._fn(*self._args)


class Scheduler:
    """The simulation's clock and its queue of timed callbacks."""

    __slots__ = ("_heap", "_seq", "_stopping", "events_run", "now")

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError("the clock must start at a finite time")
        self.now = start
        """The virtual time, in seconds. Only :meth:`run` and :meth:`step` advance it."""
        self.events_run = 0
        """How many callbacks have run so far."""
        self._heap: list[tuple[float, int, Callable[..., object], tuple[Any, ...]]] = []
        self._seq = 0
        self._stopping = False

    def __len__(self) -> int:
        """Callbacks waiting (cancelled ones included until their time comes)."""
        return len(self._heap)

    @property
    def next_time(self) -> float:
        """When the next callback is due (``inf`` when none is waiting)."""
        return self._heap[0][0] if self._heap else math.inf

    # --- scheduling ------------------------------------------------------------------

    def post(self, when: float, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` at virtual time ``when`` (the fast path: not cancellable)."""
        if not when >= self.now:  # also rejects NaN
            raise ValueError(f"cannot schedule at {when!r}, before now ({self.now!r})")
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, fn, args))

    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> Handle:
        """Run ``fn(*args)`` at virtual time ``when``; the handle can cancel it."""
        handle = Handle(when, fn, args)
        self.post(when, handle._run)
        return handle

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Handle:
        """Run ``fn(*args)`` ``delay`` seconds from now."""
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, not {delay!r}")
        return self.call_at(self.now + delay, fn, *args)

    # --- running -----------------------------------------------------------------------

    def stop(self) -> None:
        """Make the current :meth:`run` return after the callback that is running."""
        self._stopping = True

    def step(self) -> bool:
        """Run the next callback; False when none is waiting."""
        if not self._heap:
            return False
        when, _, fn, args = heapq.heappop(self._heap)
        self.now = when
        self.events_run += 1
        fn(*args)
        return True

    def run(self, until: float | None = None, max_events: int | None = None) -> int:
        """Run callbacks in time order and return how many ran.

        Stops when the heap is empty, when the next callback is due after ``until`` (the
        clock is then set to ``until``), after ``max_events`` callbacks, or when a callback
        calls :meth:`stop`.
        """
        heap = self._heap
        pop = heapq.heappop
        limit = math.inf if until is None else until
        budget = -1 if max_events is None else max_events
        ran = 0
        self._stopping = False
        while heap and ran != budget:
            if heap[0][0] > limit:
                break
            when, _, fn, args = pop(heap)
            self.now = when
            ran += 1
            fn(*args)
            if self._stopping:
                break
        self.events_run += ran
        if (
            until is not None
            and not self._stopping
            and ran != budget
            and self.now < until
            and (not heap or heap[0][0] > until)
        ):
            self.now = until
        self._stopping = False
        return ran
