"""core/fifo.py: the engine's queues behave as deques and hold no block while empty."""

from __future__ import annotations

import random
from collections import deque

import pytest

from nautilus_kad.core.fifo import Fifo


@pytest.mark.parametrize(("seed", "maxlen"), [(0, None), (1, None), (2, None), (3, None),
                                              (4, 5), (5, 1), (6, 64)])  # fmt: skip
def test_a_fifo_does_what_a_deque_does(seed: int, maxlen: int | None) -> None:
    """Bounded or not: with ``maxlen`` appends to a full queue drop the oldest."""
    rng = random.Random(seed)
    fifo: Fifo[int] = Fifo(maxlen=maxlen)
    model: deque[int] = deque(maxlen=maxlen)
    for step in range(5000):
        op = rng.randrange(7)
        if op == 0:
            fifo.append(step)
            model.append(step)
        elif op == 1:
            fifo.appendleft(step)
            model.appendleft(step)
        elif op == 2:
            items = [step] * rng.randrange(3)
            fifo.extend(items)
            model.extend(items)
        elif op == 3:
            items = list(range(rng.randrange(3)))
            fifo.extendleft(items)
            model.extendleft(items)
        elif op == 4 and rng.random() < 0.05:
            fifo.clear()
            model.clear()
        elif model:
            assert fifo[0] == model[0]
            assert fifo.popleft() == model.popleft()
        else:
            with pytest.raises(IndexError):
                fifo.popleft()
        assert len(fifo) == len(model) and bool(fifo) == bool(model)
        assert list(fifo) == list(model)
        assert (fifo._items is None) == (not model)  # no block kept while empty
