"""What the daemon's node is doing: operations in flight and recent ones, and traffic.

The daemon runs every action of its API through :meth:`Activity.run`, which times it and,
through the node's event listener, picks up what the engine reports when the query ends
(hops, requests sent, requests that timed out, the contacts it ended at). A query's
``timeouts`` are its requests that passed their soft timeout and had not answered when it
ended (dead or overloaded peers it waited on); the node-wide count of hard timeouts is
``tx.timeouts``.

:class:`Traffic` samples the node's counters once a second for the last minute's rates.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.events import Event, GetDone, LookupDone, PutDone
from ..core.ids import NodeId, distance
from ..core.messages import Contact

T = TypeVar("T")

RECENT = 20
"""Finished operations kept for the API and the page."""
TRAFFIC_SECONDS = 60
TRAFFIC_KEYS = ("rx.datagrams", "tx.datagrams", "rx.bytes", "tx.bytes", "rx.dropped")


@dataclass(eq=False)
class Operation:
    """One action run by the daemon (a put, get, ping, lookup or the start's bootstrap)."""

    id: int
    kind: str
    target: str | None
    started: float
    """``time.time()`` when it started."""
    _t0: float = field(default_factory=time.perf_counter, repr=False)
    seconds: float | None = None
    result: str | None = None
    """``ok``, ``not_found`` or ``failed`` once finished."""
    error: str | None = None
    hops: int | None = None
    requests: int | None = None
    timeouts: int | None = None
    path: list[dict[str, Any]] = field(default_factory=list)
    """The contacts the query ended at (the closest found, or the storers), nearest first,
    with their distance to the target in bits."""

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "target": self.target,
            "started": self.started,
            "age_s": round(now - self.started, 3),
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "result": self.result,
            "error": self.error,
            "hops": self.hops,
            "requests": self.requests,
            "timeouts": self.timeouts,
            "path": self.path,
        }


class Activity:
    """Operations in flight and the last :data:`RECENT` finished ones."""

    def __init__(
        self,
        on_change: Callable[[str, dict[str, Any]], None],
        on_done: Callable[[Operation], None],
    ) -> None:
        self._ids = itertools.count(1)
        self.in_flight: dict[int, Operation] = {}
        self.recent: deque[Operation] = deque(maxlen=RECENT)
        self._on_change = on_change
        self._on_done = on_done

    async def run(
        self,
        kind: str,
        target: NodeId | None,
        action: Awaitable[T],
        result_of: Callable[[T], str] = lambda _r: "ok",
    ) -> T:
        """Run ``action`` as operation ``kind``; ``result_of`` names a successful outcome
        (``ok`` or ``not_found``); an exception makes it ``failed`` and propagates."""
        op = Operation(next(self._ids), kind, None if target is None else target.hex(), time.time())
        self.in_flight[op.id] = op
        self._on_change("op_started", op.to_json(op.started))
        try:
            value = await action
        except BaseException as exc:
            self._finish(op, "failed", str(exc) or type(exc).__name__)
            raise
        self._finish(op, result_of(value), None)
        return value

    def on_event(self, event: Event) -> None:
        """Fill in what the engine tells about a query that just ended (node listener)."""
        if isinstance(event, LookupDone):
            self._attach(event.target, event.hops, event.queries, event.timeouts, event.contacts)
        elif isinstance(event, GetDone):
            self._attach(event.key, event.hops, event.queries, event.timeouts, ())
        elif isinstance(event, PutDone):
            self._attach(event.key, None, event.queries, event.timeouts, event.stored_on)

    def _attach(
        self,
        target: NodeId,
        hops: int | None,
        requests: int,
        timeouts: int,
        contacts: tuple[Contact, ...],
    ) -> None:
        wanted = target.hex()
        for op in self.in_flight.values():
            if op.target == wanted and op.requests is None:
                op.hops = hops
                op.requests = requests
                op.timeouts = timeouts
                op.path = [
                    {
                        "node_id": c.node_id.hex(),
                        "address": f"{c.address[0]}:{c.address[1]}",
                        "distance_bits": distance(target, c.node_id).bit_length(),
                    }
                    for c in sorted(contacts, key=lambda c: distance(target, c.node_id))
                ]
                return

    def _finish(self, op: Operation, result: str, error: str | None) -> None:
        op.seconds = time.perf_counter() - op._t0
        op.result = result
        op.error = error
        self.in_flight.pop(op.id, None)
        self.recent.appendleft(op)
        self._on_done(op)
        self._on_change("op_done", op.to_json(time.time()))

    def to_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "in_flight": [op.to_json(now) for op in self.in_flight.values()],
            "recent": [op.to_json(now) for op in self.recent],
        }


class Traffic:
    """Per-second deltas of the node's traffic counters over the last minute."""

    def __init__(self) -> None:
        self._last: dict[str, float] | None = None
        self.samples: deque[dict[str, float]] = deque(maxlen=TRAFFIC_SECONDS)

    def sample(self, stats: dict[str, float], now: float) -> dict[str, float]:
        current = {key: stats.get(key, 0.0) for key in TRAFFIC_KEYS}
        previous = self._last or current
        point = {"t": round(now, 3)}
        point.update({key: current[key] - previous[key] for key in TRAFFIC_KEYS})
        self._last = current
        self.samples.append(point)
        return point
