"""A clean leave in the simulator runs the engine's leave: records are handed on first."""

from __future__ import annotations

from nautilus_kad.core.ids import NodeId
from nautilus_kad.sim import Simulation


def copies(sim: Simulation, key: NodeId) -> int:
    now = sim.scheduler.now
    return sum(1 for n in sim.nodes.values() if n.engine.store.get(key, now) is not None)


def test_leaving_holders_hand_their_records_on_and_crashing_ones_do_not() -> None:
    sim = Simulation(seed=31)
    assert all(op.succeeded for op in sim.grow(120))
    keys = [NodeId.random(sim.rng) for _ in range(2)]
    puts = [sim.put(sim.joined.choice(sim.rng), key, b"v") for key in keys]
    assert sim.wait(puts) and all(op.succeeded for op in puts)
    sim.run_for(5.0)
    k = sim.config.k
    assert [copies(sim, key) for key in keys] == [k, k]
    leaving, crashing = keys
    now = sim.scheduler.now
    leavers = [n for n in sim.nodes.values() if n.engine.store.get(leaving, now)][:5]
    crashers = [n for n in sim.nodes.values() if n.engine.store.get(crashing, now)][:5]
    for node in leavers:  # one after another, as a rolling restart does
        sim.leave(node)
        sim.run_for(5.0)
        assert not node.up
    for node in crashers:
        sim.crash(node)
    sim.run_for(25.0)  # less than any repair delay or republish interval
    assert copies(sim, leaving) == k  # each leaver handed its copy to the next in line
    assert copies(sim, crashing) == k - 5


def test_holders_leaving_at_the_same_time_do_not_count_on_each_other() -> None:
    """Ten of a record's twenty holders stop cleanly at the same moment (a fleet shut down
    at once). Each leaver's handoff lookup sees the others answering with the value; if it
    counted them as holders it would hand its copy to nobody (12 of 20 copies were left
    before leavers flagged their datagrams). Leaving peers are no holders and no targets."""
    sim = Simulation(seed=32)
    assert all(op.succeeded for op in sim.grow(120))
    key = NodeId.random(sim.rng)
    put = sim.put(sim.joined.choice(sim.rng), key, b"v")
    assert sim.wait([put]) and put.succeeded
    sim.run_for(5.0)
    k = sim.config.k
    assert copies(sim, key) == k
    now = sim.scheduler.now
    holders = [n for n in sim.nodes.values() if n.engine.store.get(key, now)]
    leavers = holders[:10]
    leaver_ids = {node.node_id for node in leavers}

    stayers = [n for n in sim.nodes.values() if n.node_id not in leaver_ids]

    def entries_naming_leavers() -> int:
        return sum(node_id in n.engine.table for n in stayers for node_id in leaver_ids)

    before = entries_naming_leavers()
    for node in leavers:
        sim.leave(node)
    sim.run_for(25.0)  # less than any repair delay or republish interval
    assert all(not node.up for node in leavers)
    assert copies(sim, key) >= k
    # Whoever heard from a leaver dropped it from its table at once (the others will find
    # it dead in time).
    departed = sum(n.engine.stats["peer.departed"] for n in stayers)
    assert departed >= before // 4
    assert entries_naming_leavers() <= before - departed
