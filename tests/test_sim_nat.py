"""NAT boxes in the simulated network (sim/nat.py): RFC 4787 mapping, filtering, binding
timeouts and hairpinning, and the real engine running behind them."""

from __future__ import annotations

import random

import pytest

from nautilus_kad.core.ids import key_id
from nautilus_kad.core.messages import Address
from nautilus_kad.sim import Simulation
from nautilus_kad.sim.nat import (
    ADDRESS_RESTRICTED,
    FULL_CONE,
    PORT_RESTRICTED,
    SYMMETRIC,
    NatBox,
    NatType,
    parse_nat_type,
)
from nautilus_kad.sim.network import ConstantLatency, Endpoint, Network
from nautilus_kad.sim.scheduler import Scheduler

S1 = ("10.0.0.1", 3478)
S1_OTHER_PORT = ("10.0.0.1", 3479)
S2 = ("10.0.0.2", 3478)
H = ("100.64.0.1", 5000)
H2 = ("100.64.0.2", 5000)


class Lab:
    """Two public servers (s1 listens on two ports), hosts behind one NAT box."""

    def __init__(self, nat_type: NatType, hosts: int = 1) -> None:
        self.scheduler = Scheduler(0.0)
        self.net = Network(self.scheduler, random.Random(1), latency=ConstantLatency(0.01))
        self.box = NatBox("172.16.0.1", nat_type, seed=3)
        self.net.add_nat(self.box)
        self.got: dict[Address, list[Address]] = {}
        self.ends: dict[Address, Endpoint] = {}
        for address in (S1, S1_OTHER_PORT, S2):
            self._attach(address, None)
        for address in (H, H2)[:hosts]:
            self._attach(address, self.box)

    def _attach(self, address: Address, box: NatBox | None) -> None:
        self.got[address] = []
        self.ends[address] = self.net.attach(
            address, lambda data, src, me=address: self.got[me].append(src), box
        )

    def send(self, src: Address, dst: Address) -> None:
        self.net.send(self.ends[src], b"x", dst)
        self.scheduler.run(self.scheduler.now + 1.0)

    def last(self, who: Address) -> Address | None:
        return self.got[who][-1] if self.got[who] else None


@pytest.mark.parametrize(
    ("nat_type", "same_port"),
    [(FULL_CONE, True), (ADDRESS_RESTRICTED, True), (PORT_RESTRICTED, True), (SYMMETRIC, False)],
)
def test_mapping(nat_type: NatType, same_port: bool) -> None:
    lab = Lab(nat_type)
    lab.send(H, S1)
    lab.send(H, S2)
    seen1, seen2 = lab.last(S1), lab.last(S2)
    assert seen1 is not None and seen2 is not None
    assert seen1[0] == seen2[0] == "172.16.0.1"
    assert (seen1 == seen2) is same_port


@pytest.mark.parametrize(
    ("nat_type", "from_other_port", "from_other_ip"),
    [
        (FULL_CONE, True, True),
        (ADDRESS_RESTRICTED, True, False),
        (PORT_RESTRICTED, False, False),
        (SYMMETRIC, False, False),
    ],
)
def test_filtering(nat_type: NatType, from_other_port: bool, from_other_ip: bool) -> None:
    lab = Lab(nat_type)
    lab.send(H, S1)
    mapped = lab.last(S1)
    assert mapped is not None
    lab.send(S1, mapped)  # the answer always gets in
    assert lab.got[H] == [S1]
    lab.send(S1_OTHER_PORT, mapped)
    lab.send(S2, mapped)
    assert (S1_OTHER_PORT in lab.got[H]) is from_other_port
    assert (S2 in lab.got[H]) is from_other_ip
    dropped = 2 - from_other_port - from_other_ip
    assert lab.net.stats.nat_dropped == dropped


def test_binding_timeout_and_outbound_refresh() -> None:
    lab = Lab(NatType(timeout=30.0))
    lab.send(H, S1)
    mapped = lab.last(S1)
    assert mapped is not None
    for _ in range(5):  # keepalives every 20 s keep the mapping
        lab.scheduler.run(lab.scheduler.now + 19.0)
        lab.send(H, S1)
    assert lab.last(S1) == mapped
    lab.send(S1, mapped)
    assert lab.got[H] == [S1]
    lab.scheduler.run(lab.scheduler.now + 31.0)  # idle past the timeout
    lab.send(S1, mapped)
    assert lab.got[H] == [S1]
    assert lab.box.stats["dropped.no_mapping"] == 1
    lab.send(H, S1)
    assert lab.last(S1) != mapped  # a new mapping, on a new port


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpinning(hairpin: bool) -> None:
    lab = Lab(NatType(filtering=FULL_CONE.filtering, hairpin=hairpin), hosts=2)
    lab.send(H2, S1)
    h2_mapped = lab.last(S1)
    assert h2_mapped is not None
    lab.send(H, h2_mapped)
    if hairpin:
        assert len(lab.got[H2]) == 1 and lab.got[H2][0][0] == "172.16.0.1"
    else:
        assert lab.got[H2] == []
    lab.send(H, H2)  # the LAN path works either way
    assert lab.got[H2][-1] == H


def test_private_addresses_are_unreachable_from_outside() -> None:
    lab = Lab(FULL_CONE)
    lab.send(S1, H)
    assert lab.got[H] == []
    assert lab.net.stats.nat_dropped == 1


def test_hole_punching_between_two_port_restricted_nats() -> None:
    scheduler = Scheduler(0.0)
    net = Network(scheduler, random.Random(1), latency=ConstantLatency(0.01))
    box_a = NatBox("172.16.0.1", PORT_RESTRICTED, seed=1)
    box_b = NatBox("172.16.0.2", PORT_RESTRICTED, seed=2)
    net.add_nat(box_a)
    net.add_nat(box_b)
    got: dict[str, list[Address]] = {"a": [], "b": [], "s": []}
    a = net.attach(H, lambda d, src: got["a"].append(src), box_a)
    b = net.attach(H2, lambda d, src: got["b"].append(src), box_b)
    s = net.attach(S1, lambda d, src: got["s"].append(src))
    net.send(a, b"x", S1)
    net.send(b, b"x", S1)
    scheduler.run(1.0)
    a_ext, b_ext = got["s"]
    net.send(a, b"punch", b_ext)  # dropped at B's NAT, but opens A's filter to b_ext
    scheduler.run(2.0)
    assert got["b"] == []
    net.send(b, b"punch", a_ext)
    scheduler.run(3.0)
    assert got["a"] == [b_ext]
    net.send(a, b"hello", b_ext)
    scheduler.run(4.0)
    assert got["b"] == [a_ext]
    assert s is not None


def test_a_nat_owns_its_ip() -> None:
    lab = Lab(FULL_CONE)
    with pytest.raises(ValueError, match="in use"):
        lab.net.add_nat(NatBox("10.0.0.1", FULL_CONE, 1))
    with pytest.raises(ValueError, match="attached"):
        lab.net.attach(("172.16.0.1", 9), lambda d, s: None)
    with pytest.raises(ValueError, match="NAT type"):
        parse_nat_type("cone-ish")
    assert parse_nat_type("Symmetric") is SYMMETRIC


def test_engines_behind_nats_put_and_get_as_clients() -> None:
    """The real engine behind every kind of NAT: client-mode nodes join through public ones,
    put, and read each other's records."""
    sim = Simulation(seed=3)
    public = [sim.add_node() for _ in range(24)]
    for node in public[1:]:
        sim.join(node, [public[0].address])
    sim.run_for(30.0)
    behind = [
        sim.add_node(client_mode=True, nat=nat_type)
        for nat_type in (FULL_CONE, ADDRESS_RESTRICTED, PORT_RESTRICTED, SYMMETRIC) * 2
    ]
    assert len(sim.nats) == 8 and all(n.address[0].startswith("100.64.") for n in behind)
    joins = [sim.join(node, [public[0].address]) for node in behind]
    assert sim.wait(joins, timeout=60.0)
    assert all(op.succeeded for op in joins)
    puts = [
        sim.put(node, key_id(f"key-{i}".encode()), f"value-{i}".encode())
        for i, node in enumerate(behind)
    ]
    assert sim.wait(puts, timeout=60.0) and all(op.succeeded for op in puts)
    gets = [
        sim.get(behind[(i + 3) % len(behind)], key_id(f"key-{i}".encode()), f"value-{i}".encode())
        for i in range(len(behind))
    ]
    assert sim.wait(gets, timeout=60.0) and all(op.succeeded for op in gets)
    # Nobody holds a NATed node's private address, and the clients stay out of tables.
    for node in public:
        hosts = {c.host for c in node.engine.table}
        assert not any(h.startswith(("100.64.", "172.16.")) for h in hosts)
    assert sum(box.stats["mappings"] for box in sim.nats) >= 8
