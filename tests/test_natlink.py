"""The reachability state as a real node shows it (aio Node.reachability, nat.* counters),
on loopback UDP."""

from __future__ import annotations

import asyncio
import random

import pytest

from nautilus_kad import KadConfig
from nautilus_kad.aio.node import Node
from nautilus_kad.aio.transport import is_local_ip
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.messages import Dialback, NatRequest, Probe, ProbeRelay

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


def test_floods_on_real_sockets_are_counted_refused_and_reach_no_third_party() -> None:
    """Issue 11 point 8 on loopback UDP: an attacker with a valid identity floods two real
    servers with PROBE_RELAYs naming a victim, DIALBACKs and PROBEs nobody asked for. The
    victim receives nothing, the relays are refused and counted, at most the per-IP limit
    of DIALBACKs is served (the probes go to the attacker's own address, never beyond the
    bytes it sent), the servers' modes and tables do not change, and they keep serving."""

    async def scenario() -> None:
        s = await Node.start(host="127.0.0.1", port=0)
        t = await Node.start(host="127.0.0.2", port=0, bootstrap=[f"127.0.0.1:{s.address[1]}"])
        loop = asyncio.get_running_loop()
        got: dict[str, list[bytes]] = {"victim": [], "attacker": []}

        class Sink(asyncio.DatagramProtocol):
            def __init__(self, name: str) -> None:
                self.name = name

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                got[self.name].append(data)

        victim, _ = await loop.create_datagram_endpoint(
            lambda: Sink("victim"), local_addr=("127.0.0.3", 0)
        )
        attacker, _ = await loop.create_datagram_endpoint(
            lambda: Sink("attacker"), local_addr=("127.0.0.4", 0)
        )
        try:
            await s.ping(t.address)
            tables = {n: {c.node_id for c in n.routing_table} for n in (s, t)}
            target = victim.get_extra_info("sockname")[:2]
            auth = Authenticator(Identity.generate(random.Random(4)))
            rng = random.Random(5)
            sent = 0
            for n in range(300):
                message: NatRequest = (
                    ProbeRelay(rng.randbytes(8), target),
                    Dialback(rng.randbytes(8)),
                    Probe(rng.randbytes(8)),
                )[n % 3]
                data = encode_message(message, rng.randbytes(8), auth)
                for node in (s, t):
                    attacker.sendto(data, node.address)
                    sent += len(data)
                if n % 30 == 0:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(3.0)  # every probe copy and late answer has come
            assert got["victim"] == []
            assert sum(map(len, got["attacker"])) <= sent  # no amplification
            for node in (s, t):
                stats = node.stats
                dropped = stats.get("rx.dropped.rate_limited", 0)  # the source's rate limit
                relays = stats.get("nat.relay.refused.unknown", 0)
                probes = stats.get("nat.probes.unmatched", 0)
                assert relays + dropped >= 100 and probes + dropped >= 100, stats  # all counted
                assert stats.get("nat.dialback.arranged", 0) <= 3  # per requester IP a minute
                assert node.reachability["mode"] == "server"
                assert {c.node_id for c in node.routing_table} == tables[node]
            assert (await s.ping(t.address)) is not None  # still serving
        finally:
            victim.close()
            attacker.close()
            await t.stop()
            await s.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
