"""The replay filter of signed requests (core/replay.py): flat arrays instead of a dict, the
same answers. Checked against the dict it replaced, kept here as the reference model."""

from __future__ import annotations

import itertools
import random

import pytest

from nautilus_kad.core.replay import ReplayFilter


class DictReplayFilter:
    """The former implementation (a dict of 64-bit signature prefix → time seen)."""

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: dict[int, float] = {}
        self._next_sweep = 0.0

    def replayed(self, signature: bytes, now: float) -> bool:
        seen = self._seen
        if now >= self._next_sweep:
            cutoff = now - self.window
            expired = [k for k, t in itertools.takewhile(lambda kt: kt[1] < cutoff, seen.items())]
            for key in expired:
                del seen[key]
            self._next_sweep = now + self.window / 16
        key = int.from_bytes(signature[:8], "big")
        seen_at = seen.get(key)
        if seen_at is not None and now - seen_at <= self.window:
            return True
        seen.pop(key, None)
        seen[key] = now
        if len(seen) > self.capacity:
            del seen[next(iter(seen))]
        return False

    def __len__(self) -> int:
        return len(self._seen)


@pytest.mark.parametrize("seed", range(6))
def test_same_answers_as_the_dict_under_replays_expiry_and_eviction(seed: int) -> None:
    rng = random.Random(seed)
    window = rng.choice([5.0, 60.0, 600.0])
    capacity = rng.choice([3, 50, 1000, 65536])
    new, old = ReplayFilter(window, capacity), DictReplayFilter(window, capacity)
    sent: list[bytes] = []
    now = 1000.0
    refused = 0
    for _ in range(20_000):
        now += window * rng.expovariate(rng.choice([10.0, 300.0, 3000.0]))
        if sent and rng.random() < 0.3:  # a replay, recent or old
            signature = sent[-rng.randrange(1, min(len(sent), rng.choice([4, 100, 3000])) + 1)]
        else:
            signature = rng.randbytes(16)
            sent.append(signature)
        answer = new.replayed(signature, now)
        assert answer == old.replayed(signature, now)
        assert len(new) == len(old)
        refused += answer
    assert refused > 500  # the run did exercise replays


def test_every_replay_within_the_window_is_refused_and_none_after() -> None:
    replays = ReplayFilter(window=100.0, capacity=100_000)
    signatures = [bytes([i % 256, i // 256]) * 8 for i in range(5000)]
    for i, signature in enumerate(signatures):
        assert not replays.replayed(signature, i * 0.01)
    assert len(replays) == 5000
    for i, signature in enumerate(signatures):  # each seen 99.995 s ago
        assert replays.replayed(signature, 100.0 + i * 0.01 - 0.005)
    # 100 s after each was first seen (and re-refused, which does not renew it) it is new.
    later = [replays.replayed(s, i * 0.01 + 100.001) for i, s in enumerate(signatures)]
    assert not any(later)
    edge = ReplayFilter(window=100.0, capacity=10)
    assert not edge.replayed(b"e" * 16, 0.0)
    assert edge.replayed(b"e" * 16, 100.0)  # exactly the window: still a replay
    assert not edge.replayed(b"e" * 16, 100.5)


def test_capacity_forgets_the_oldest_first_and_memory_stays_bounded() -> None:
    replays = ReplayFilter(window=1e9, capacity=1000)
    for i in range(50_000):
        assert not replays.replayed(i.to_bytes(16, "big"), float(i))
    assert len(replays) == 1000
    assert all(replays.replayed(i.to_bytes(16, "big"), 5e4) for i in range(49_000, 50_000))
    assert not replays.replayed((48_999).to_bytes(16, "big"), 5e4)
    assert len(replays._slots) <= 8 * 1024 and len(replays._keys) <= 3 * 1000


def test_a_quiet_node_lets_the_filter_shrink() -> None:
    replays = ReplayFilter(window=10.0, capacity=65536)
    for i in range(10_000):
        replays.replayed(i.to_bytes(16, "big"), i * 0.001)
    replays.replayed(b"late" * 4, 1000.0)  # long after: everything expired
    assert len(replays) == 1
    assert len(replays._keys) <= 2 and len(replays._slots) <= 64
