"""Hostile nodes in the simulator (sim/adversarial/nodes.py) and the adversarial scenario."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from nautilus_kad.cli import cli
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import Lookup
from nautilus_kad.core.messages import Contact, FindNode, FindValue, Nodes
from nautilus_kad.core.records import make_immutable
from nautilus_kad.sim import SimAuthenticator, Simulation
from nautilus_kad.sim.adversarial.answers import FORGE, SCATTER, SCATTER_FORGE, forged_address
from nautilus_kad.sim.adversarial.nodes import (
    MISROUTE,
    SILENT,
    Colluders,
    HostileEngine,
    sybil_identity,
    turn_honest,
    turn_hostile,
)
from nautilus_kad.sim.adversarial.scenario import AdversarialSpec, run_adversarial
from nautilus_kad.sim.adversarial.scoring import strict_ok
from nautilus_kad.sim.simulation import SimNode, default_sim_config


def _network(n: int = 40, seed: int = 3) -> Simulation:
    sim = Simulation(seed, config=default_sim_config().with_changes(sessions=False))
    ops = sim.grow(n)
    assert all(op.succeeded for op in ops)
    return sim


def _ask(sim: Simulation, asker: Identity, node_index: int, request: FindNode | FindValue) -> Nodes:
    """Send ``request`` to a node straight through its engine and decode the signed answer."""
    node = sim.nodes[node_index]
    auth = SimAuthenticator(asker, sim.keyring)  # what the simulated nodes check
    data = encode_message(request, b"abcdefgh", auth, pad_to=400)
    node.engine.receive_datagram(data, ("10.200.0.1", 9999), sim.now)
    out = node.engine.datagrams_to_send()
    decoded = [decode_datagram(d, auth) for d, a in out if a == ("10.200.0.1", 9999)]
    answers = [e for e in decoded if e.txid == b"abcdefgh"]  # (it also pings the stranger)
    assert len(answers) == 1
    assert answers[0].sender_id == node.node_id  # signed by the node's own key
    message = answers[0].message
    assert isinstance(message, Nodes)
    return message


def test_misrouting_nodes_name_only_colluders_and_never_serve_values() -> None:
    sim = _network(40)
    asker = Identity.generate(random.Random(9))
    nodes = sorted(sim.nodes.values(), key=lambda n: n.index)
    colluders = Colluders(sim.config.k)
    bad = nodes[5:15]
    for node in bad:
        turn_hostile(node, MISROUTE, colluders)
    assert len(colluders) == 10
    target = NodeId.random(random.Random(4))
    honest_answer = {c.node_id for c in _ask(sim, asker, nodes[1].index, FindNode(target)).contacts}
    hostile_answer = {c.node_id for c in _ask(sim, asker, bad[0].index, FindNode(target)).contacts}
    bad_ids = {n.node_id for n in bad}
    assert hostile_answer and hostile_answer <= bad_ids
    assert honest_answer - bad_ids  # the honest node names honest nodes too
    # Misrouting nodes keep no value: a FIND_VALUE gets colluders, not the record.
    record = make_immutable(b"hidden", 600)
    bad[0].engine.store.put(record, sim.now, sim.now + 600)
    answer = _ask(sim, asker, bad[0].index, FindValue(record.key))
    assert {c.node_id for c in answer.contacts} <= bad_ids
    # Turning honest again restores the plain engine and its store.
    turn_honest(bad[0])
    assert type(bad[0].engine) is KadEngine
    assert bad[0].node_id not in colluders


def _conspiracy(sim: Simulation, bad: list[SimNode], behaviour: str) -> Colluders:
    """``bad`` turn hostile with ``behaviour``; the oracle is the simulation's ground truth."""
    by_id = {n.node_id: n for n in sim.nodes.values()}
    bad_ids = {n.node_id for n in bad}

    def honest(target: NodeId) -> list[Contact]:
        ids = [i for i in sim.live.closest(target, len(sim.live)) if i not in bad_ids]
        return [Contact(i, *by_id[i].address) for i in ids[: sim.config.k]]

    colluders = Colluders(sim.config.k, honest=honest)
    for node in bad:
        turn_hostile(node, behaviour, colluders)
    return colluders


def test_scattering_colluders_never_name_a_colluder_twice_to_one_requester() -> None:
    sim = _network(60, seed=8)
    nodes = sorted(sim.nodes.values(), key=lambda n: n.index)
    bad = nodes[10:40]  # 30 colluders, k = 20
    _conspiracy(sim, bad, SCATTER)
    bad_ids = {n.node_id for n in bad}
    asker, other = Identity.generate(random.Random(9)), Identity.generate(random.Random(10))
    target = NodeId.random(random.Random(4))
    first = [c.node_id for c in _ask(sim, asker, bad[0].index, FindNode(target)).contacts]
    second = [c.node_id for c in _ask(sim, asker, bad[1].index, FindNode(target)).contacts]
    assert first and set(first) <= bad_ids and set(second) <= bad_ids
    assert not set(first) & set(second)  # a second colluder names fresh ones
    assert bad[0].node_id not in first and bad[1].node_id not in second
    # Another requester, or another target, starts afresh: the nearest colluders again.
    again = [c.node_id for c in _ask(sim, other, bad[1].index, FindNode(target)).contacts]
    assert set(again) & set(first)
    assert len(first) == sim.config.k


def test_forging_colluders_name_the_true_honest_neighbours_at_false_addresses() -> None:
    sim = _network(60, seed=8)
    nodes = sorted(sim.nodes.values(), key=lambda n: n.index)
    bad = nodes[10:40]
    colluders = _conspiracy(sim, bad, FORGE)
    assert colluders.honest is not None
    asker = Identity.generate(random.Random(9))
    target = NodeId.random(random.Random(4))
    truth = colluders.honest(target)
    answer = _ask(sim, asker, bad[0].index, FindNode(target)).contacts
    assert [c.node_id for c in answer] == [c.node_id for c in truth]
    real = {c.node_id: c.address for c in truth}
    for contact in answer:
        assert contact.address != real[contact.node_id]
        assert contact.host == real[contact.node_id][0]  # its host, a dead port
        honest = Contact(contact.node_id, *real[contact.node_id])
        assert contact.address == forged_address(honest, bad[0].node_id)
    other_lie = _ask(sim, asker, bad[3].index, FindNode(target)).contacts
    assert {c.address for c in other_lie}.isdisjoint({c.address for c in answer})
    # Scatter-forge: half forged neighbours, half fresh colluders, interleaved.
    for node in bad:
        turn_hostile(node, SCATTER_FORGE, colluders)
    mixed = _ask(sim, asker, bad[2].index, FindNode(target)).contacts
    bad_ids = {n.node_id for n in bad}
    forged = [c for c in mixed if c.node_id in real]
    assert len(forged) == 10 and all(c.address != real[c.node_id] for c in forged)
    assert len([c for c in mixed if c.node_id in bad_ids]) == 10
    assert mixed[0].node_id in real and mixed[1].node_id in bad_ids


def test_strict_scoring_counts_a_path_only_until_it_meets_a_hostile_node() -> None:
    own, goal, bad, other = NodeId(1), NodeId(2), NodeId(3), NodeId(4)
    lookup = Lookup(NodeId(0), own, 3, 3, [Contact(n, "10.0.0.9", 1) for n in (goal, bad, other)])
    assert [c.node_id for c in lookup.next_queries()] == [goal, bad, other]
    lookup.on_response(goal)
    lookup.on_response(bad)
    assert strict_ok(lookup, {bad}, {goal})  # reached before the hostile node
    assert not strict_ok(lookup, {goal}, {other})  # another hostile node came first
    assert not strict_ok(lookup, {bad}, {other})  # asked, but it has not answered
    lookup.on_response(other)
    assert strict_ok(lookup, {5}, {other})
    assert not strict_ok(lookup, {bad}, {other})  # it answered, but after the hostile one


def test_silent_nodes_drop_everything() -> None:
    sim = _network(20, seed=5)
    node = sim.nodes[3]
    turn_hostile(node, SILENT, Colluders(sim.config.k))
    assert isinstance(node.engine, HostileEngine)
    ping = sim.ping(sim.nodes[1], node.address)
    sim.wait([ping])
    assert not ping.succeeded
    assert node.engine.stats["adversary.dropped"] >= 1


def test_sybil_ids_sit_next_to_their_key_and_join() -> None:
    sim = _network(30, seed=6)
    rng = random.Random(1)
    key = NodeId.random(rng)
    identity = sybil_identity(key, 24, rng)
    assert identity.node_id >> 232 == key >> 232
    sybil = sim.add_node(identity=identity)
    seeds = [n.address for n in sim.joined.sample(sim.rng, 3)]
    join = sim.join(sybil, seeds)
    sim.wait([join])
    assert join.succeeded
    # Honest nodes accept it under its chosen id: it is the closest node to the key.
    lookup = sim.lookup(sim.nodes[0], key)
    sim.wait([lookup])
    assert lookup.result is not None
    assert lookup.result.contacts[0].node_id == identity.node_id  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="prefix_bits"):
        sybil_identity(key, 300, rng)


@pytest.mark.slow
def test_disjoint_paths_hold_against_20_percent_misrouting_and_forging() -> None:
    """The issue's bound at CI scale: 800 nodes with k = 8 (a larger network with k = 20 needs
    minutes), 20% hostile nodes, misrouting and the strongest behaviour (scatter-forge:
    fresh colluders per requester plus the true honest neighbours at false addresses). Four
    paths hold 99% or better; one path does measurably worse (misroute), or reaches the
    target without meeting a hostile node less often (strict, both). Before lookups tried
    other addresses and let a path take over a node another path asked at a false address,
    four paths got 56% of lookups against scatter-forge here (all colluders then told the
    same lie per id): a
    regression in path isolation fails this."""
    spec = AdversarialSpec(
        nodes=800,
        behaviours=(MISROUTE, SCATTER_FORGE),
        levels=(0.2,),
        paths=(1, 4),
        lookups=200,
        seed=1,
        config=default_sim_config().with_changes(k=8, replacement_cache_size=8),
    )
    result = run_adversarial(spec)
    one, four, forge_one, forge_four = result.cells
    assert [(c.behaviour, c.paths) for c in result.cells] == [
        (MISROUTE, 1), (MISROUTE, 4), (SCATTER_FORGE, 1), (SCATTER_FORGE, 4)
    ]  # fmt: skip
    # Measured (seed 1): misroute and scatter-forge 100 % / 100 % (lookups / gets); one path
    # 92 % / 90.5 % and 98 % / 98 %.
    assert four.lookup_rate >= 0.99 and four.get_rate >= 0.99
    assert forge_four.lookup_rate >= 0.99 and forge_four.get_rate >= 0.99
    assert four.malicious == forge_four.malicious == 160
    # The adversary bites: one path does measurably worse, and four paths cost more messages.
    assert one.lookup_rate <= 0.96 and one.get_rate <= 0.96
    assert forge_one.lookup_strict_rate < forge_four.lookup_strict_rate
    assert four.lookup_messages > 2 * one.lookup_messages
    # Strict (the paper's): some path reached the target without meeting a hostile node.
    assert four.lookup_strict_rate > one.lookup_strict_rate + 0.1
    assert all(c.lookup_strict_rate <= c.lookup_rate for c in result.cells)


def test_command_prints_the_table() -> None:
    result = CliRunner().invoke(
        cli,
        ["sim-adversarial", "--nodes", "60", "--lookups", "5", "--malicious", "0.2",
         "--paths", "1,2", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "lookup success" in result.output and "msgs/lookup" in result.output
    assert "20%" in result.output
    bad = CliRunner().invoke(cli, ["sim-adversarial", "--malicious", "x"])
    assert bad.exit_code == 2
    paper = CliRunner().invoke(
        cli,
        ["sim-adversarial", "--nodes", "60", "--lookups", "4", "--malicious", "0.2",
         "--paths", "2", "--k", "8", "--alpha", "1", "--behaviour", "scatter-forge,scatter",
         "-q"],
    )  # fmt: skip
    assert paper.exit_code == 0, paper.output
    assert "k = 8, alpha = 1" in paper.output
    assert "scatter-forge" in paper.output and "strict" in paper.output
    for wrong in (["--behaviour", "nice"], ["--behaviour", "sybil,misroute"], ["--k", "0"]):
        out = CliRunner().invoke(cli, ["sim-adversarial", "--nodes", "60", *wrong])
        assert out.exit_code == 2, out.output
        assert "Traceback" not in out.output
