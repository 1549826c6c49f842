"""The real engine decides its own reachability behind the simulator's NATs: public and
full-cone nodes become servers, nodes behind NATs that drop unsolicited datagrams stay
clients and never enter a routing table, and everyone can put and get."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.ids import key_id
from nautilus_kad.core.natconfig import NatConfig
from nautilus_kad.core.reachability import Mode
from nautilus_kad.sim import Simulation
from nautilus_kad.sim.nat import ADDRESS_RESTRICTED, FULL_CONE, PORT_RESTRICTED, SYMMETRIC, NatType
from nautilus_kad.sim.simulation import default_sim_config

KINDS = {
    "full-cone": NatType(FULL_CONE.mapping, FULL_CONE.filtering, timeout=3600.0),
    "address-restricted": ADDRESS_RESTRICTED,
    "port-restricted": PORT_RESTRICTED,
    "symmetric": SYMMETRIC,
}


def test_each_node_learns_its_reachability_and_only_servers_route() -> None:
    # Every simulated public host shares one /24: count observers per IP here.
    config = default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32))
    sim = Simulation(seed=5, config=config)
    seeds = [sim.add_node(mode="server") for _ in range(30)]
    sim.join(seeds[0], [])
    for node in seeds[1:]:
        sim.join(node, [seeds[0].address])
    sim.run_for(10.0)
    public = [sim.add_node(mode="auto") for _ in range(4)]
    natted = {
        kind: [sim.add_node(mode="auto", nat=t) for _ in range(2)] for kind, t in KINDS.items()
    }
    everyone = public + [n for nodes in natted.values() for n in nodes]
    joins = [sim.join(node, [s.address for s in seeds[:3]]) for node in everyone]
    assert sim.wait(joins, timeout=60.0) and all(op.succeeded for op in joins)
    sim.run_for(900.0)
    for node in public + natted["full-cone"]:
        assert node.engine.nat.mode is Mode.SERVER, node.engine.natlink.reachability(sim.now)
    hidden = [n for kind in ("address-restricted", "port-restricted", "symmetric")
              for n in natted[kind]]  # fmt: skip
    for node in hidden:
        assert node.engine.nat.mode is Mode.CLIENT, node.engine.natlink.reachability(sim.now)
        assert node.engine.nat.stats()["probes.answered"] == 0
    # Classes from the ports observers saw.
    for node in natted["symmetric"]:
        assert node.engine.nat.classes[4].value == "endpoint-dependent"
    for node in natted["port-restricted"] + natted["address-restricted"]:
        assert node.engine.nat.classes[4].value == "endpoint-independent"
    # No server's table holds a node that cannot be reached.
    hidden_ids = {n.node_id for n in hidden}
    for node in seeds + public + natted["full-cone"]:
        assert not hidden_ids & {c.node_id for c in node.engine.table}
    # Clients keep full use of the DHT.
    puts = [sim.put(n, key_id(f"k{i}".encode()), f"v{i}".encode()) for i, n in enumerate(hidden)]
    assert sim.wait(puts, timeout=60.0) and all(op.succeeded for op in puts)
    gets = [sim.get(hidden[(i + 1) % len(hidden)], key_id(f"k{i}".encode()), f"v{i}".encode())
            for i in range(len(hidden))]  # fmt: skip
    assert sim.wait(gets, timeout=60.0) and all(op.succeeded for op in gets)
    # Their own traffic opens holes in their NATs: probes through those holes must never
    # count, however long ago their last round was (a client that is sure re-probes only
    # every 15 min). Keep them busy across the rounds of the next half hour.
    for step in range(30):
        ops = [sim.lookup(n, key_id(f"busy{step}-{i}".encode())) for i, n in enumerate(hidden)]
        sim.wait(ops, timeout=60.0)
        sim.run_for(60.0)
    for node in hidden:
        assert node.engine.natlink.nat.mode is Mode.CLIENT, node.engine.natlink.reachability(
            sim.now
        )
    for node in seeds + public + natted["full-cone"]:
        assert not hidden_ids & {c.node_id for c in node.engine.table}


def test_a_new_external_address_is_adopted_within_two_windows_and_rechecked() -> None:
    """Issue 11 point 1 end to end: a full-cone node's router gets a new WAN IP mid-run (its
    mappings lost). Its ordinary traffic votes the new address in within two vote windows;
    it goes back to client at once and its rounds prove the new address reachable again."""
    config = default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32))
    sim = Simulation(seed=6, config=config)
    seeds = [sim.add_node(mode="server") for _ in range(60)]
    sim.join(seeds[0], [])
    for node in seeds[1:]:
        sim.join(node, [seeds[0].address])
    sim.run_for(10.0)
    box = sim.add_nat(KINDS["full-cone"])
    node = sim.add_node(mode="auto", nat=box)
    assert sim.wait([sim.join(node, [s.address for s in seeds[:3]])], timeout=60.0)

    def busy(seconds: float) -> None:
        """An ordinary lookup every 100 s: each answer is a vote (and each peer asked is
        one whose probes prove nothing for a while: 60 servers leave enough others)."""
        for step in range(int(seconds // 100)):
            sim.wait([sim.lookup(node, key_id(f"q{sim.now}-{step}".encode()))], timeout=30.0)
            sim.run_for(100.0)

    busy(900.0)
    nat = node.engine.nat
    old = nat.voters[4].address
    assert nat.mode is Mode.SERVER and old is not None and old[0] == box.ip
    changes = nat.stats()["mode.changes"]
    renumbered_at = sim.now
    new_ip = sim.renumber_nat(box)
    window = config.nat.vote_window
    busy(2 * window)
    adopted = nat.voters[4]
    assert adopted.address is not None and adopted.address[0] == new_ip, adopted.address
    assert adopted.changed_at is not None and adopted.changed_at - renumbered_at <= 2 * window
    assert nat.stats()["address.changes"] == 1
    # Re-checked: demoted at the change (whatever the dwell), then proved again.
    assert nat.stats()["mode.changes"] >= changes + 1
    busy(config.nat.mode_min_dwell + 300.0)
    assert nat.mode is Mode.SERVER, node.engine.natlink.reachability(sim.now)
    assert nat.stats()["mode.changes"] == changes + 2
    assert nat.tracker.epoch == 1  # the old address's rounds were voided


def test_the_nat_deadline_the_engine_reads_is_always_the_current_one() -> None:
    """The engine reads the NAT layer's next deadline after every datagram; NatLink keeps
    it as an attribute refreshed by each entry point that can move it. Checked at every
    read, through probe rounds that succeed (public, full cone), fail (symmetric) and
    the helper and prober services the servers run."""
    config = default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32))
    sim = Simulation(seed=7, config=config)
    seeds = [sim.add_node(mode="server") for _ in range(12)]
    sim.join(seeds[0], [])
    for node in seeds[1:]:
        sim.join(node, [seeds[0].address])
    sim.run_for(10.0)
    auto = [sim.add_node(mode="auto") for _ in range(2)]
    auto += [sim.add_node(mode="auto", nat=KINDS[kind]) for kind in ("full-cone", "symmetric")]
    reads = [0]
    for node in seeds + auto:
        engine = node.engine

        def checked(
            engine: KadEngine = engine, get_timer: Callable[[], float] = engine.get_timer
        ) -> float:
            reads[0] += 1
            link = engine.natlink
            assert link.deadline == link.service.timer()
            return get_timer()

        engine.get_timer = checked  # type: ignore[method-assign]
    joins = [sim.join(node, [s.address for s in seeds[:3]]) for node in auto]
    assert sim.wait(joins, timeout=60.0) and all(op.succeeded for op in joins)
    sim.run_for(900.0)
    assert [node.engine.nat.mode for node in auto] == [Mode.SERVER] * 3 + [Mode.CLIENT]
    served = sum((n.engine.nat.stats() for n in seeds), Counter[str]())
    assert served["dialback.arranged"] > 0 and served["relay.probed"] > 0
    rounds = sum((n.engine.nat.stats() for n in auto), Counter[str]())
    assert rounds["rounds.succeeded"] > 0 and rounds["probes.timed_out"] > 0
    assert reads[0] > 1000
