"""The reachability state as a real node shows it (aio Node.reachability, nat.* counters),
on loopback UDP."""

from __future__ import annotations

import asyncio

import pytest

from nautilus_kad import KadConfig
from nautilus_kad.aio.node import Node
from nautilus_kad.aio.transport import is_local_ip

pytestmark = pytest.mark.integration


def test_a_node_shows_its_reachability_and_counts_votes() -> None:
    async def scenario() -> None:
        seed = await Node.start(host="127.0.0.1", port=0)
        auto = await Node.start(
            host="127.0.0.1",
            port=0,
            bootstrap=[f"{seed.address[0]}:{seed.address[1]}"],
            config=KadConfig(mode="auto"),
        )
        try:
            await auto.ping(seed.address)
            state = seed.reachability
            assert state["mode"] == "server" and state["fixed"] is True
            shown = auto.reachability
            # One node behind 127.0.0.1 can prove nothing: it stays a client, and says so.
            assert shown["mode"] == "client" and shown["fixed"] is False
            assert auto.engine.flags & 0x01
            assert auto.stats["nat.votes.counted"] >= 1
            assert set(shown) >= {"external", "nat_class", "last_probes", "since", "stats"}
        finally:
            await auto.stop()
            await seed.stop()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_only_the_hosts_own_addresses_are_local() -> None:
    """What a node bound to 0.0.0.0 asks of its adopted external IP (a bind, no datagram)."""
    assert is_local_ip("127.0.0.1")
    assert not is_local_ip("192.0.2.77")  # TEST-NET-1: never a host's own
    assert not is_local_ip("not an ip")
