"""The reachability test end to end between NatService instances (core/natservice.py): a
small in-memory network where each node may sit behind a filter of a given kind, and every
message goes through the real encoder and decoder."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from typing import Any

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.messages import (
    Address,
    Contact,
    Dialback,
    Message,
    NatRequest,
    Probe,
    ProbeRelay,
)
from nautilus_kad.core.nat import NatState
from nautilus_kad.core.natconfig import NatConfig
from nautilus_kad.core.natservice import NatService
from nautilus_kad.core.reachability import Mode

CFG = NatConfig()
LATENCY = 0.02


class Node:
    def __init__(self, net: Net, n: int, filtering: str | None, mode: str) -> None:
        self.net = net
        self.identity = Identity.generate(net.rng)
        self.auth = Authenticator(self.identity)
        self.address = (f"10.{n}.0.1", 4000)
        self.filtering = filtering
        """None (public), "full-cone", "address" or "port" (restricted)."""
        self.opened: dict[Address, float] = {}
        """Remote endpoints we sent to (our NAT's filter state)."""
        self.hole_lifetime = net.hole_lifetime
        """How long an opened endpoint stays open without traffic (inf: for ever); traffic
        either way refreshes it, as Linux conntrack does (RFC 4787 inbound refresh)."""
        self.pending: dict[bytes, tuple[Any, Address]] = {}
        self.state = NatState(CFG, random.Random(n), 0.0, mode=mode)
        self.service = NatService(
            self.state,
            send_request=self.send_request,
            send_notice=self.send_notice,
            servers=self.servers,
            is_server=lambda node_id, address: any(
                c.node_id == node_id and c.address == address for c in self.servers()
            ),
            own_address=lambda: self.address,
            answer_timeout=2.0,
            probe_size=len(encode_message(Probe(bytes(8)), bytes(8), self.auth)),
        )
        self.table: list[Contact] = []
        self.probes_received = 0

    @property
    def contact(self) -> Contact:
        return Contact(self.identity.node_id, *self.address)

    def servers(self) -> Sequence[Contact]:
        return [c for c in self.table if self.net.by_address[c.address].state.mode is Mode.SERVER]

    def admits(self, source: Address) -> bool:
        """Whether our NAT lets a datagram from ``source`` in."""
        if self.filtering in (None, "full-cone"):
            return True
        now, life = self.net.now, self.hole_lifetime
        if self.filtering == "address":
            holes = [a for a, t in self.opened.items() if a[0] == source[0] and now - t < life]
        else:
            holes = [source] if now - self.opened.get(source, -math.inf) < life else []
        for hole in holes:
            self.opened[hole] = now  # inbound traffic keeps the hole open
        return bool(holes)

    def transmit(
        self, message: Message, txid: bytes, to: Address, now: float, pad_to: int = 0
    ) -> None:
        self.opened[to] = now
        self.service.sent(to[0], now)
        data = encode_message(message, txid, self.auth, pad_to=pad_to)
        self.net.post(now + LATENCY, to, data, self.address)

    def send_request(
        self, address: Address, node_id: Any, request: NatRequest, now: float, pad_to: int
    ) -> bytes:
        txid = self.net.rng.randbytes(8)
        self.pending[txid] = (request, address)
        self.net.timers.append((now + 2.0, txid, self))
        self.transmit(request, txid, address, now, pad_to)
        return txid

    def send_notice(self, address: Address, probe: Probe, now: float) -> None:
        self.transmit(probe, self.net.rng.randbytes(8), address, now)

    def receive(self, data: bytes, source: Address, now: float) -> None:
        if not self.admits(source):
            self.net.filtered += 1
            return
        self.state.received_from(source[0], now)  # what the engine reports for each datagram
        envelope = decode_datagram(data, self.auth)
        message = envelope.message
        if isinstance(message, Dialback | ProbeRelay | Probe):
            if isinstance(message, Probe):
                self.probes_received += 1

            def reply(response: Message, at: float) -> None:
                self.transmit(response, envelope.txid, source, at)

            self.service.serve(message, envelope.sender_id, source, len(data), reply, now)
            return
        held = self.pending.pop(envelope.txid, None)
        assert held is not None and held[1] == source
        self.service.observed(source, message.observed, now)  # type: ignore[union-attr]
        self.service.on_answer(held[0], envelope.txid, message, now)


class Net:
    def __init__(self, hole_lifetime: float = math.inf) -> None:
        self.hole_lifetime = hole_lifetime
        self.rng = random.Random(5)
        self.nodes: list[Node] = []
        self.by_address: dict[Address, Node] = {}
        self.queue: list[tuple[float, int, Address, bytes, Address]] = []
        self.timers: list[tuple[float, bytes, Node]] = []
        self.seq = 0
        self.now = 0.0
        self.filtered = 0

    def add(self, filtering: str | None = None, mode: str = "auto") -> Node:
        node = Node(self, len(self.nodes) + 1, filtering, mode)
        self.nodes.append(node)
        self.by_address[node.address] = node
        return node

    def post(self, when: float, to: Address, data: bytes, source: Address) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (when, self.seq, to, data, source))

    def run(self, until: float) -> None:
        while self.now < until:
            step = min(
                [self.queue[0][0]] if self.queue else [until],
                default=until,
            )
            due = min([step, until, *[n.service.timer() for n in self.nodes]])
            due = max(due, self.now)
            self.now = due
            while self.queue and self.queue[0][0] <= self.now:
                _, _, to, data, source = heapq.heappop(self.queue)
                target = self.by_address.get(to)
                if target is not None:
                    target.receive(data, source, self.now)
            for when, txid, node in [t for t in self.timers if t[0] <= self.now]:
                self.timers.remove((when, txid, node))
                held = node.pending.pop(txid, None)
                if held is not None:
                    node.service.on_timeout(held[0], txid, self.now)
            for node in self.nodes:
                if node.service.timer() <= self.now:
                    node.service.run(self.now)
            if due >= until:
                break
            if not self.queue and all(n.service.timer() > until for n in self.nodes):
                self.now = until


def network(*filters: str | None, seeds: int = 6, hole_lifetime: float = math.inf) -> Net:
    """``seeds`` public servers that know each other, then one node per filter kind that
    knows every seed (but the seeds do not know it)."""
    net = Net(hole_lifetime)
    servers = [net.add(mode="server") for _ in range(seeds)]
    for node in servers:
        node.table = [s.contact for s in servers if s is not node]
    for kind in filters:
        node = net.add(kind)
        node.table = [s.contact for s in servers]
    return net


def test_each_kind_learns_whether_it_is_reachable() -> None:
    net = network(None, "full-cone", "address", "port")
    public, cone, address, port = net.nodes[-4:]
    net.run(60.0)
    assert public.state.mode is Mode.SERVER
    assert cone.state.mode is Mode.SERVER
    assert address.state.mode is Mode.CLIENT
    assert port.state.mode is Mode.CLIENT
    # The restricted ones were probed and their NATs dropped the probes, except those from
    # a node they had talked to (one of their helpers), which prove nothing and did not count.
    assert net.filtered > 0
    for node in (address, port):
        assert node.probes_received == node.state.stats()["probes.tainted"]
    assert address.state.stats()["probes.answered"] == port.state.stats()["probes.answered"] == 0
    assert address.state.stats()["probes.timed_out"] >= CFG.probe_window
    # The reachable ones got their probes from IPs they never sent to.
    assert cone.state.stats()["probes.answered"] >= CFG.probe_quorum


def test_probes_that_keep_a_hole_open_do_not_count() -> None:
    """NAT holes that close after 280 s idle but stay open while either side writes (RFC 4787
    recommends 300 s): in a network of six servers, each the node contacted, probers probing again
    and again would keep open the holes its own first datagrams made. Those probes do not
    count, and rounds wait until a prober can prove something: the restricted nodes stay
    clients over an hour; the reachable ones still become servers."""
    net = network(None, "full-cone", "address", "port", hole_lifetime=280.0)
    public, cone, address, port = net.nodes[-4:]
    for node in net.nodes[-4:]:  # they joined: each sent to every seed
        for contact in node.table:
            node.opened[contact.address] = 0.0
            node.service.sent(contact.host, 0.0)
    net.run(3600.0)
    assert public.state.mode is Mode.SERVER and cone.state.mode is Mode.SERVER
    assert address.state.mode is Mode.CLIENT and port.state.mode is Mode.CLIENT
    for node in (address, port):
        stats = node.state.stats()
        assert stats["probes.answered"] == 0 and stats["mode.changes"] == 0
        assert stats["probes.tainted"] > 0 and stats["rounds.held_off"] > 0
    assert cone.state.stats()["rounds.held_off"] > 0  # it waited, then proved it


def test_probes_only_go_to_requesters_and_within_limits() -> None:
    net = network(None, seeds=6)
    newcomer = net.nodes[-1]
    net.run(200.0)
    helpers = net.nodes[:6]
    assert newcomer.state.mode is Mode.SERVER
    served = sum(h.state.stats()["dialback.arranged"] for h in helpers)
    probed = sum(h.state.stats()["relay.probed"] for h in helpers)
    assert served == probed >= CFG.probe_quorum
    # Only ever the newcomer was probed: every PROBE it received was asked for by it.
    assert newcomer.probes_received == CFG.probe_copies * probed


def test_with_too_few_servers_rounds_are_inconclusive_not_failures() -> None:
    net = network(None, seeds=1)  # one server: no third node to probe from
    node = net.nodes[-1]
    net.run(20.0)
    stats = node.state.stats()
    assert stats["probes.refused"] >= 1 and stats["rounds.failed"] == 0
    assert node.state.mode is Mode.CLIENT


def test_forged_relays_and_floods_reach_no_third_party() -> None:
    """A node outside the prober's table names a victim in PROBE_RELAYs; a flood of
    DIALBACKs hits one helper: refused and counted, the victim receives nothing, and the
    helper arranges no more probes than its limits."""
    net = network(seeds=6)
    prober, helper = net.nodes[0], net.nodes[1]
    attacker = net.add()  # knows the servers, is known by none
    victim = net.add(mode="client")
    for n in range(50):
        attacker.send_request(prober.address, None, ProbeRelay(bytes([n]) * 8, victim.address),
                              net.now, 1000)  # fmt: skip
        attacker.send_request(helper.address, None, Dialback(bytes([n]) * 8), net.now, 0)
    net.run(30.0)
    assert victim.probes_received == 0
    assert prober.state.stats()["relay.refused.unknown"] == 50
    assert helper.state.stats()["dialback.arranged"] <= CFG.serve_per_requester
    assert helper.state.stats()["dialback.refused.rate"] >= 50 - CFG.serve_per_requester
    # Only the attacker's own address was ever probed on its behalf.
    assert attacker.probes_received <= CFG.probe_copies * CFG.serve_per_requester
