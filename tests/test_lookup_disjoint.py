"""Disjoint-path lookups (S/Kademlia) in core/lookup.py, driven against scripted worlds."""

from __future__ import annotations

import random

import pytest
from test_lookup import World, kademlia_answers

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import Lookup
from nautilus_kad.core.lookup_disjoint import DisjointLookup, new_lookup
from nautilus_kad.core.messages import Contact
from nautilus_kad.sim import Simulation


def drive_paths(
    lookup: DisjointLookup,
    answer: object,
    rng: random.Random,
    *,
    silent: frozenset[NodeId] = frozenset(),
) -> dict[NodeId, int]:
    """Run ``lookup`` to the end answering in random order; returns node → path that asked.

    Checks on the way: no node is asked twice (by any path), each path keeps at most alpha in
    flight, and the lookup never stalls.
    """
    assert callable(answer)
    asked: dict[NodeId, int] = {}
    in_flight: list[NodeId] = []
    for _ in range(100_000):
        for contact in lookup.next_queries():
            node = contact.node_id
            assert node not in asked, "a node was queried twice"
            asked[node] = lookup._owners[node]
            in_flight.append(node)
        for path in lookup.paths:
            assert path.in_flight <= lookup.alpha
        assert lookup.in_flight == len(in_flight)
        if lookup.is_done:
            break
        assert in_flight, "lookup stalled"
        node = in_flight.pop(rng.randrange(len(in_flight)))
        if node in silent:
            lookup.on_failure(node)
        else:
            lookup.on_response(node, answer(node, lookup.target))
    else:  # pragma: no cover - a failing test
        raise AssertionError("lookup did not finish")
    return asked


def test_one_path_is_the_plain_lookup() -> None:
    world = World(50, 1)
    lookup = new_lookup(NodeId(5), world.own, 20, 3, [world.contacts[world.ids[0]]], paths=1)
    assert type(lookup) is Lookup
    assert KadConfig().disjoint_paths == 1
    assert KadConfig.secure().disjoint_paths == 4
    with pytest.raises(ValueError, match="disjoint_paths"):
        KadConfig(disjoint_paths=0)


def test_seeds_are_dealt_round_robin_by_distance() -> None:
    world = World(100, 2)
    target = NodeId.random(random.Random(3))
    seeds = [world.contacts[n] for n in world.ids[:40]]
    lookup = DisjointLookup(target, world.own, 20, 3, seeds, paths=4)
    ordered = sorted(world.ids[:40], key=lambda n: n ^ target)
    for i, path in enumerate(lookup.paths):
        own = [c.contact.node_id for c in path._by_distance.values()]
        assert sorted(own, key=lambda n: n ^ target) == ordered[i::4]


@pytest.mark.parametrize(("seed", "paths"), [(1, 2), (2, 4), (3, 8)])
def test_paths_never_share_a_node_and_merge_to_the_true_k_closest(seed: int, paths: int) -> None:
    world = World(400, seed)
    answer = kademlia_answers(world, 20)
    rng = random.Random(seed)
    for _ in range(4):
        target = NodeId.random(rng)
        seeds = world.far_seeds(target, 40)
        lookup = DisjointLookup(target, world.own, 20, 3, seeds, paths)
        asked = drive_paths(lookup, answer, rng)
        # Every path did work, and each of its queries went to a node no other path asked.
        assert sorted(set(asked.values())) == list(range(paths))
        assert lookup.queries_sent == len(asked)
        result = [c.contact.node_id for c in lookup.closest_responded()]
        assert result == world.truth(target, 20)
        # Answers only count on the path that asked.
        for node, owner in asked.items():
            for i, path in enumerate(lookup.paths):
                cand = path.candidate(node)
                if i != owner and cand is not None:
                    assert cand.state != 3  # never RESPONDED on another path


def _misrouting_world(seed: int, fraction: float) -> tuple[World, set[NodeId], object]:
    """Honest nodes answer from real routing tables; malicious ones collude, answering every
    request with the malicious nodes closest to the target (real nodes that answer too)."""
    world = World(400, seed)
    honest_answer = kademlia_answers(world, 20)
    rng = random.Random(seed)
    bad = set(rng.sample(world.ids, int(fraction * len(world.ids))))

    def answer(node: NodeId, target: NodeId) -> list[Contact]:
        if node in bad:
            return [world.contacts[n] for n in sorted(bad, key=lambda n: n ^ target)[:20]]
        return list(honest_answer(node, target))

    return world, bad, answer


def test_disjoint_paths_survive_misrouting_that_defeats_one_path() -> None:
    """The honest node closest to the target is found far more often on 4 paths than on 1:
    a misrouting node poisons only the path that asked it."""
    found = {1: 0, 4: 0}
    trials = 40
    world, bad, answer = _misrouting_world(7, 0.3)
    rng = random.Random(7)
    honest = [n for n in world.ids if n not in bad]
    for _ in range(trials):
        target = NodeId.random(rng)
        goal = min(honest, key=lambda n: n ^ target)
        # Seeds as a real table holds them: a mix of both kinds, not near the target.
        seeds = world.far_seeds(target, 20)
        for paths in found:
            lookup = DisjointLookup(target, world.own, 20, 3, seeds, paths)
            drive_paths(lookup, answer, random.Random(1))
            got = {c.contact.node_id for c in lookup.closest_responded()}
            found[paths] += goal in got
    assert found[4] >= 0.95 * trials
    assert found[4] > found[1]


def test_finish_stops_every_path_and_silent_nodes_only_cost_their_path() -> None:
    world = World(300, 4)
    answer = kademlia_answers(world, 20)
    rng = random.Random(4)
    target = NodeId.random(rng)
    lookup = DisjointLookup(target, world.own, 20, 3, world.far_seeds(target, 30), 3)
    silent = frozenset(rng.sample(world.ids, 60))
    drive_paths(lookup, answer, rng, silent=silent)
    live = [n for n in world.truth(target, 40) if n not in silent][:20]
    result = [c.contact.node_id for c in lookup.closest_responded()]
    # Answers hold each node's k closest, silent ones included, so the farthest few live
    # nodes may never be named; the nearest are always found, and only live ones count.
    assert len(result) == 20 and not silent.intersection(result)
    assert result[:10] == live[:10]
    assert lookup.hops >= 1
    lookup2 = DisjointLookup(target, world.own, 20, 3, world.far_seeds(target, 30), 3)
    assert lookup2.next_queries()
    lookup2.finish()
    assert lookup2.is_done and lookup2.next_queries() == []
    assert all(p.finished for p in lookup2.paths)


def test_a_slow_node_holds_only_its_own_path_until_given_up() -> None:
    world = World(200, 8)
    answer = kademlia_answers(world, 20)
    target = NodeId.random(random.Random(8))
    lookup = DisjointLookup(target, world.own, 3, 1, world.far_seeds(target, 4), 2)
    first = lookup.next_queries()
    assert len(first) == 2  # one per path (alpha = 1)
    slow, other = first
    lookup.on_soft_timeout(slow.node_id)
    # The other path goes on; the slow node's own path asks its next candidate meanwhile.
    lookup.on_response(other.node_id, answer(other.node_id, target))
    assert lookup.next_queries()
    owner = lookup.paths[lookup._owners[slow.node_id]]
    assert owner.slow == 1 and lookup.slow == 1
    lookup.on_give_up(slow.node_id)
    cand = owner.candidate(slow.node_id)
    assert cand is not None and not cand.awaited


def test_the_engine_shows_a_running_lookups_state_machine() -> None:
    """``KadEngine.lookup_state``: the simulator's window on each path of a lookup."""
    sim = Simulation(4)
    assert all(op.succeeded for op in sim.grow(30))
    node = sim.nodes[0]
    qid = node.engine.find_node(NodeId(77), sim.now, paths=2)
    state = node.engine.lookup_state(qid)
    assert isinstance(state, DisjointLookup) and len(state.paths) == 2
    assert node.engine.lookup_state(qid + 1000) is None
    ping = node.engine.ping(sim.nodes[1].address, sim.now)
    assert node.engine.lookup_state(ping) is None
    sim.run_for(10.0)
    assert node.engine.lookup_state(qid) is None  # it ended
    assert state.is_done and state.closest_responded()  # what the caller kept stays readable


def test_answers_no_path_asked_for_and_departing_answers() -> None:
    """An answer from a node no path asked changes nothing; a node that answers while
    leaving lends its contacts to the path that asked it but is no result, and is no
    result either when it says so after it answered."""
    with pytest.raises(ValueError, match="at least one path"):
        DisjointLookup(NodeId(5), NodeId(1), 4, 1, [], paths=0)
    world = World(60, 4)
    target = NodeId.random(random.Random(5))
    seeds = [world.contacts[n] for n in world.ids[:4]]
    lookup = DisjointLookup(target, world.own, 4, 1, seeds, paths=2)
    stranger = world.contacts[world.ids[50]]
    lookup.on_response(stranger.node_id, [world.contacts[world.ids[51]]], b"", stranger.address)
    assert lookup.responses == 0 and lookup.candidate(world.ids[51]) is None
    assert lookup.closest_responded(0) == []
    first, second = lookup.next_queries()  # one per path
    assert lookup.candidate(first.node_id) is not None
    lent = world.contacts[min(world.ids[4:50], key=lambda n: n ^ target)]  # worth keeping
    lookup.on_departing(first.node_id, [lent], b"", first.address)
    asker = lookup.paths[lookup._shared.owners[first.node_id]]
    assert asker.candidate(lent.node_id) is not None  # its contacts are used
    assert first.node_id not in {c.contact.node_id for c in lookup.closest_responded()}
    # ``second`` answered its path; a later leaving answer changes nothing there.
    lookup.on_response(second.node_id, [], b"", second.address)
    assert second.node_id in {c.contact.node_id for c in lookup.closest_responded()}
    responses = lookup.responses
    lookup.on_departing(second.node_id, [lent], b"", second.address)
    assert lookup.responses == responses
