"""A first-in first-out queue that costs nothing while empty.

``collections.deque`` allocates a 64-slot block as soon as it is made: 760 bytes for an
empty queue. Every engine holds several queues that stay empty nearly all their life (the
replication backlog, the handoff scans, the STOREs waiting for a window slot), so in a
100 000-node simulation they were tens of megabytes of nothing. :class:`Fifo` keeps a deque
only while it holds something, and drops it as soon as it is drained. With ``maxlen`` it
is bounded as ``deque(maxlen=...)`` is: appending to a full queue drops the oldest item.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Fifo(Generic[T]):
    """The deque operations the engine's queues use, on a deque made on first use."""

    __slots__ = ("_items", "maxlen")

    def __init__(self, items: Iterable[T] = (), maxlen: int | None = None) -> None:
        self._items: deque[T] | None = None
        self.maxlen = maxlen
        self.extend(items)

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self) -> Iterator[T]:
        return iter(()) if self._items is None else iter(self._items)

    def __getitem__(self, index: int) -> T:
        if self._items is None:
            raise IndexError("empty queue")
        return self._items[index]

    def _deque(self) -> deque[T]:
        items = self._items
        if items is None:
            items = self._items = deque(maxlen=self.maxlen)
        return items

    def append(self, item: T) -> None:
        self._deque().append(item)

    def appendleft(self, item: T) -> None:
        self._deque().appendleft(item)

    def extend(self, items: Iterable[T]) -> None:
        self._deque().extend(items)
        if not self._items:
            self._items = None

    def extendleft(self, items: Iterable[T]) -> None:
        self._deque().extendleft(items)
        if not self._items:
            self._items = None

    def popleft(self) -> T:
        items = self._items
        if items is None:
            raise IndexError("pop from an empty queue")
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def clear(self) -> None:
        self._items = None
