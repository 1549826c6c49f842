"""The real engine decides its own reachability behind the simulator's NATs: public and
full-cone nodes become servers, nodes behind NATs that drop unsolicited datagrams stay
clients and never enter a routing table, and everyone can put and get."""

from __future__ import annotations

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
