"""The behaviour fingerprint (benchmarks/fingerprint.py) runs, repeats itself, and sees changes.

Structural refactors of the engine are checked with the full-size fingerprint (``python -m
benchmarks.fingerprint --against REV``); here the small version proves the tool itself works:
the same code gives the same nine digests, and a change the simulator's own digest cannot see
(a counter) still changes the state digest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.fingerprint import KINDS, QUICK, SCENARIOS, fingerprint
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.messages import Address


@pytest.fixture(scope="module")
def quick() -> dict[str, dict[str, str]]:
    return fingerprint(QUICK)


def test_every_scenario_gives_three_digests(quick: dict[str, dict[str, str]]) -> None:
    assert set(quick) == set(SCENARIOS)
    for digests in quick.values():
        assert set(digests) == set(KINDS)
        assert all(len(d) == 64 for d in digests.values())
    distinct = {d for digests in quick.values() for d in digests.values()}
    assert len(distinct) == 3 * len(SCENARIOS)


def test_the_same_code_gives_the_same_digests(quick: dict[str, dict[str, str]]) -> None:
    assert fingerprint(QUICK, ("durability",))["durability"] == quick["durability"]


@pytest.fixture
def counting_engine() -> Iterator[None]:
    """An engine that counts one more statistic: behaviour on the wire is the same."""
    original = KadEngine.receive_datagram

    def receive(engine: KadEngine, data: bytes, address: Address, now: float) -> None:
        engine.stats["fingerprint.extra"] += 1
        original(engine, data, address, now)

    KadEngine.receive_datagram = receive  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        KadEngine.receive_datagram = original  # type: ignore[method-assign]


def test_a_stats_only_change_shows_in_the_state_digest(
    quick: dict[str, dict[str, str]], counting_engine: None
) -> None:
    changed = fingerprint(QUICK, ("churn",))["churn"]
    assert changed["net"] == quick["churn"]["net"]
    assert changed["events"] == quick["churn"]["events"]
    assert changed["state"] != quick["churn"]["state"]
