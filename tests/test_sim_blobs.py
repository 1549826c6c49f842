"""Large values in the simulator (issue 15, point 4): pieces are ordinary immutable records,
so the engines' replication and repair keep them, and every value reads back whole after
half the nodes crash. The full-size run (500 nodes, 20 values of 64 KiB) is
``python -m benchmarks.blobs --sim``; this is the same experiment, smaller.
"""

from __future__ import annotations

from nautilus_kad.core.ids import NodeId
from nautilus_kad.sim.blobs import BlobGet, BlobMassKillSpec, BlobPut, run_blob_mass_kill
from nautilus_kad.sim.simulation import Simulation


def test_values_survive_the_loss_of_half_the_nodes() -> None:
    spec = BlobMassKillSpec(nodes=80, values=3, size=12_000, seed=3)
    result = run_blob_mass_kill(spec)
    assert result.stored == 3
    assert result.pieces == 12 + 1  # 12 chunks, listed by the root record itself
    assert result.before.minimum >= spec.config.k
    assert result.after_kill.minimum < spec.config.k  # the kill did hit every record
    assert result.after_repair.lost == 0
    assert result.after_repair.minimum >= spec.config.k  # repaired onto k live nodes
    assert result.reads_ok == 3, result.read_errors


def test_a_get_reports_missing_pieces_and_the_runs_are_deterministic() -> None:
    def run() -> tuple[str, str]:
        sim = Simulation(7)
        nodes = [sim.add_node() for _ in range(30)]
        sim.join(nodes[0], [])
        for node in nodes[1:]:
            sim.join(node, [nodes[0].address])
            sim.run_for(1.0)
        sim.run_for(30.0)
        value = sim.rng.randbytes(5000)
        put = BlobPut(sim, nodes[3], NodeId(12345), value)
        while not put.done:
            sim.run_for(1.0)
        assert put.ok and min(put.plan.acks()) == sim.config.k
        for node in sim.nodes.values():
            node.engine.store.remove(put.piece_keys[0])
        get = BlobGet(sim, nodes[9], NodeId(12345))
        while not get.done:
            sim.run_for(1.0)
        assert get.value is None
        return get.error, sim.digest()

    first = run()
    assert first[0] == "could not find 1 of 5 pieces of the value (1000 of 5000 bytes missing)"
    assert run() == first
