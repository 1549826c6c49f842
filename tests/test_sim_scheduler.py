"""The simulator's virtual clock and event heap (sim/scheduler.py)."""

from __future__ import annotations

import math
import random

import pytest

from nautilus_kad.sim.scheduler import Scheduler


def test_runs_in_time_order_and_fifo_among_equal_times() -> None:
    sched = Scheduler(start=10.0)
    seen: list[tuple[float, str]] = []

    def note(label: str) -> None:
        seen.append((sched.now, label))

    sched.post(12.0, note, "c")
    sched.post(11.0, note, "a")
    sched.post(12.0, note, "d")  # same time as "c", scheduled later: runs after it
    sched.post(11.0, note, "b")
    sched.call_at(12.0, note, "e")
    assert sched.run() == 5
    assert seen == [(11.0, "a"), (11.0, "b"), (12.0, "c"), (12.0, "d"), (12.0, "e")]
    assert sched.now == 12.0
    assert sched.events_run == 5


def test_fifo_holds_for_many_equal_times() -> None:
    sched = Scheduler()
    order: list[int] = []
    rng = random.Random(7)
    times = [rng.choice([1.0, 2.0, 3.0]) for _ in range(300)]
    for i, t in enumerate(times):
        sched.post(t, order.append, i)
    sched.run()
    expected = sorted(range(300), key=lambda i: (times[i], i))
    assert order == expected


def test_callbacks_scheduled_while_running_run_in_order() -> None:
    sched = Scheduler()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        sched.call_later(0.0, seen.append, "same-time, later")
        sched.call_later(1.0, seen.append, "one second later")

    sched.post(0.0, first)
    sched.post(0.0, seen.append, "queued before")
    sched.run()
    assert seen == ["first", "queued before", "same-time, later", "one second later"]
    assert sched.now == 1.0


def test_run_until_advances_the_clock_and_leaves_later_events() -> None:
    sched = Scheduler()
    seen: list[float] = []
    for t in (1.0, 2.0, 5.0):
        sched.post(t, lambda: seen.append(sched.now))
    assert sched.run(until=3.0) == 2
    assert seen == [1.0, 2.0]
    assert sched.now == 3.0  # the clock moves to `until` even without an event there
    assert len(sched) == 1
    assert sched.next_time == 5.0
    assert sched.run(until=5.0) == 1  # events due exactly at `until` run
    assert seen == [1.0, 2.0, 5.0]
    assert sched.next_time == math.inf


def test_hours_of_virtual_time_cost_no_wall_time() -> None:
    sched = Scheduler()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks < 3600:
            sched.call_later(1.0, tick)

    sched.call_later(1.0, tick)
    sched.run()
    assert ticks == 3600
    assert sched.now == 3600.0


def test_cancel() -> None:
    sched = Scheduler()
    seen: list[str] = []
    keep = sched.call_later(1.0, seen.append, "kept")
    drop = sched.call_later(1.0, seen.append, "dropped")
    drop.cancel()
    sched.run()
    assert seen == ["kept"]
    keep.cancel()  # after it ran: harmless
    assert seen == ["kept"]


def test_max_events_and_stop() -> None:
    sched = Scheduler()
    seen: list[int] = []
    for i in range(10):
        sched.post(float(i), seen.append, i)
    assert sched.run(max_events=3) == 3
    assert seen == [0, 1, 2]
    sched.post(3.5, sched.stop)
    assert sched.run() == 2  # event 3, then the stop
    assert seen == [0, 1, 2, 3]
    assert sched.now == 3.5
    assert sched.run(until=100.0) == 6
    assert seen == list(range(10))
    assert sched.now == 100.0


def test_step() -> None:
    sched = Scheduler()
    assert not sched.step()
    sched.post(2.0, lambda: None)
    assert sched.step()
    assert sched.now == 2.0
    assert not sched.step()


def test_rejects_the_past_and_nan() -> None:
    sched = Scheduler(start=5.0)
    with pytest.raises(ValueError):
        sched.post(4.0, lambda: None)
    with pytest.raises(ValueError):
        sched.post(math.nan, lambda: None)
    with pytest.raises(ValueError):
        sched.call_later(-1.0, lambda: None)
    with pytest.raises(ValueError):
        Scheduler(start=math.inf)
    assert len(sched) == 0
