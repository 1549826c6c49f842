"""Fan-out of live events to the event-stream clients, with bounds on both sides.

Each client gets a queue of at most :data:`QUEUE_LIMIT` events. A client that reads slower
than events come (a stalled browser tab) is not allowed to grow the daemon's memory: once its
queue is full it is marked overflowed, gets one ``overflow`` event and is disconnected (an
``EventSource`` reconnects by itself and starts again from a fresh snapshot). At most
``max_clients`` streams are open at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 256
MAX_CLIENTS = 16


@dataclass(eq=False)
class Subscriber:
    """One open event stream."""

    queue: asyncio.Queue[tuple[int, str, str] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    overflowed: bool = False


class EventHub:
    """Publishes ``(id, event name, JSON data)`` to every subscriber."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.max_clients = max_clients
        self._subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self.closed = False
        self.overflows = 0
        """Clients disconnected because they fell behind (a metric)."""

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber | None:
        """A new subscriber, or ``None`` when the hub is full or closed."""
        if self.closed or len(self._subscribers) >= self.max_clients:
            return None
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, name: str, data: Any) -> None:
        if self.closed or not self._subscribers:
            return
        item = (next(self._ids), name, json.dumps(data, separators=(",", ":")))
        for subscriber in list(self._subscribers):
            if subscriber.overflowed:
                continue
            try:
                subscriber.queue.put_nowait(item)
            except asyncio.QueueFull:
                subscriber.overflowed = True
                self.overflows += 1
                self._wake(subscriber)

    def close(self) -> None:
        """End every stream (the daemon is stopping): each gets ``None`` as its last item."""
        self.closed = True
        for subscriber in self._subscribers:
            self._wake(subscriber)

    @staticmethod
    def _wake(subscriber: Subscriber) -> None:
        """Make room for the end marker so the stream's reader wakes up and leaves."""
        while True:
            try:
                subscriber.queue.put_nowait(None)
            except asyncio.QueueFull:
                subscriber.queue.get_nowait()
            else:
                return
