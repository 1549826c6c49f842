"""The iterative lookup state machine (core/lookup.py) against scripted worlds."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import CandidateState, Lookup
from nautilus_kad.core.messages import Contact
from nautilus_kad.core.routing import RoutingTable

Answer = Callable[[NodeId, NodeId], Sequence[Contact]]
"""(answering node, target) -> the contacts it returns."""


class World:
    """A fixed population of nodes; ``dead`` ones never answer."""

    def __init__(self, n: int, seed: int, k: int = 20) -> None:
        self.rng = random.Random(seed)
        self.k = k
        self.ids = [NodeId.random(self.rng) for _ in range(n)]
        self.contacts = {
            nid: Contact(nid, f"10.{i // 250}.{i % 250}.1", 4000 + i)
            for i, nid in enumerate(self.ids)
        }
        self.dead: set[NodeId] = set()
        self.own = NodeId.random(self.rng)

    def truth(self, target: int, count: int, *, live_only: bool = False) -> list[NodeId]:
        pool = [n for n in self.ids if not (live_only and n in self.dead)]
        return sorted(pool, key=lambda n: n ^ target)[:count]

    def oracle(self, node: NodeId, target: NodeId) -> list[Contact]:
        """Every node knows everyone: it answers with the global k closest."""
        return [self.contacts[n] for n in self.truth(target, self.k)]

    def far_seeds(self, target: int, count: int) -> list[Contact]:
        """Seeds from the farther half of the population (so the search has work to do)."""
        ordered = sorted(self.ids, key=lambda n: n ^ target)
        far = ordered[len(ordered) // 2 :]
        return [self.contacts[n] for n in self.rng.sample(far, count)]


def kademlia_answers(world: World, k: int) -> Answer:
    """Each node answers from its own real routing table holding everyone it could fit."""
    config = KadConfig(k=k)
    tables: dict[NodeId, RoutingTable] = {}
    for nid in world.ids:
        table = RoutingTable(nid, config)
        for other in world.ids:
            table.observe(world.contacts[other], 0.0)
        tables[nid] = table

    def answer(node: NodeId, target: NodeId) -> list[Contact]:
        return tables[node].closest(target, k)

    return answer


@dataclass
class DriveStats:
    queried: set[NodeId]
    heard: set[NodeId]
    max_in_flight: int
    late: int


def drive(
    lookup: Lookup,
    world: World,
    answer: Answer,
    rng: random.Random,
    *,
    p_slow: float = 0.0,
    max_steps: int = 100_000,
) -> DriveStats:
    """Run ``lookup`` to completion, answering in a random order; checks invariants."""
    alpha = lookup.alpha
    in_flight: list[NodeId] = []
    slow: list[NodeId] = []
    queried: set[NodeId] = set()
    heard: set[NodeId] = set()
    max_in_flight = 0
    late_answers = 0
    for _ in range(max_steps):
        for contact in lookup.next_queries():
            assert contact.node_id not in queried, "a peer was queried twice"
            assert contact.node_id != lookup.own_id
            queried.add(contact.node_id)
            in_flight.append(contact.node_id)
        assert lookup.in_flight == len(in_flight) <= alpha
        assert lookup.slow == len(slow)
        max_in_flight = max(max_in_flight, len(in_flight))
        if lookup.is_done:
            break
        assert in_flight or slow, "lookup stalled: nothing in flight and not done"
        pool = in_flight + slow
        node = pool[rng.randrange(len(pool))]
        if node in in_flight and (node in world.dead or rng.random() < p_slow):
            in_flight.remove(node)
            slow.append(node)
            lookup.on_soft_timeout(node)
            continue
        was_slow = node in slow
        if was_slow:
            slow.remove(node)
        else:
            in_flight.remove(node)
        if node in world.dead:
            lookup.on_failure(node)
            continue
        late_answers += was_slow
        contacts = list(answer(node, lookup.target))
        heard.update(c.node_id for c in contacts)
        lookup.on_response(node, contacts, token=b"tok" + node.to_bytes32()[:4])
    else:  # pragma: no cover - a failing test
        raise AssertionError("lookup did not finish")
    return DriveStats(queried, heard, max_in_flight, late_answers)


def state_of(lookup: Lookup, node_id: NodeId) -> CandidateState | None:
    cand = lookup.candidate(node_id)
    return None if cand is None else cand.state


def hop_of(lookup: Lookup, node_id: NodeId) -> int:
    cand = lookup.candidate(node_id)
    assert cand is not None
    return cand.hop


def result_ids(lookup: Lookup) -> list[NodeId]:
    return [c.contact.node_id for c in lookup.closest_responded()]


# --- convergence -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_converges_to_true_k_closest_with_oracle_answers(seed: int) -> None:
    world = World(500, seed)
    rng = random.Random(seed)
    target = NodeId.random(rng)
    lookup = Lookup(target, world.own, k=20, alpha=3, seeds=world.far_seeds(target, 3))
    stats = drive(lookup, world, world.oracle, rng)
    assert result_ids(lookup) == world.truth(target, 20)
    assert stats.max_in_flight == 3
    # Seeds are hop 1; the truth came in their answers: hop 2.
    assert lookup.hops == 2
    assert lookup.queries_sent == len(stats.queried)
    assert lookup.responses == lookup.queries_sent
    # Only the seeds and the true k closest were ever asked.
    assert len(stats.queried) <= 3 + 20


@pytest.mark.parametrize(("seed", "k", "alpha"), [(1, 20, 3), (2, 8, 3), (3, 4, 1), (4, 8, 5)])
def test_converges_with_real_routing_tables(seed: int, k: int, alpha: int) -> None:
    world = World(300, seed, k=k)
    answer = kademlia_answers(world, k)
    rng = random.Random(seed)
    for _ in range(5):
        target = NodeId.random(rng)
        seeds = world.far_seeds(target, 2)
        lookup = Lookup(target, world.own, k=k, alpha=alpha, seeds=seeds)
        stats = drive(lookup, world, answer, rng)
        assert result_ids(lookup) == world.truth(target, k)
        assert stats.max_in_flight <= alpha
        assert 2 <= lookup.hops <= 8
        assert lookup.hops == max(c.hop for c in lookup.closest_responded())
        # Far fewer queries than nodes: the search is logarithmic, not a flood.
        assert lookup.queries_sent < 100


def test_target_equal_to_a_node_finds_it_first() -> None:
    world = World(500, 11)
    target = world.ids[123]
    lookup = Lookup(target, world.own, 20, 3, world.far_seeds(target, 3))
    drive(lookup, world, world.oracle, random.Random(1))
    assert result_ids(lookup)[0] == target
    assert result_ids(lookup) == world.truth(target, 20)


def test_own_id_is_never_a_candidate() -> None:
    world = World(100, 12)
    target = NodeId(world.own ^ 0xFF)
    me = Contact(world.own, "10.9.9.9", 1)
    lookup = Lookup(target, world.own, 20, 3, [me, *world.far_seeds(target, 3)])

    def with_me(node: NodeId, t: NodeId) -> list[Contact]:
        return [me, *world.oracle(node, t)]

    drive(lookup, world, with_me, random.Random(2))
    assert world.own not in result_ids(lookup)
    assert lookup.candidate(world.own) is None


# --- alpha, soft timeouts, late answers ------------------------------------------------


def test_at_most_alpha_in_flight_and_slots_refill() -> None:
    world = World(50, 13)
    target = NodeId.random(world.rng)
    seeds = [world.contacts[n] for n in world.ids[:10]]
    lookup = Lookup(target, world.own, k=20, alpha=3, seeds=seeds)
    first = lookup.next_queries()
    assert len(first) == 3
    assert lookup.in_flight == 3
    assert lookup.next_queries() == []  # all slots taken
    # The three are the closest seeds.
    closest_seeds = sorted((c.node_id for c in seeds), key=lambda n: n ^ target)[:3]
    assert [c.node_id for c in first] == closest_seeds
    lookup.on_response(first[0].node_id, [])
    assert lookup.in_flight == 2
    refill = lookup.next_queries()
    assert len(refill) == 1  # exactly one slot was freed
    assert lookup.in_flight == 3


def test_soft_timeout_frees_slot_and_late_answer_is_used() -> None:
    world = World(200, 14, k=20)
    target = NodeId.random(world.rng)
    truth = world.truth(target, 20)
    seeds = world.far_seeds(target, 4)
    lookup = Lookup(target, world.own, k=20, alpha=3, seeds=seeds)
    first = lookup.next_queries()
    assert len(first) == 3
    slow_node = first[0].node_id
    lookup.on_soft_timeout(slow_node)
    assert lookup.in_flight == 2
    assert lookup.slow == 1
    cand = lookup.candidate(slow_node)
    assert cand is not None
    assert cand.state is CandidateState.SLOW
    # The slot went to the fourth seed.
    again = lookup.next_queries()
    assert [c.node_id for c in again] == [
        c.node_id for c in sorted(seeds, key=lambda c: c.node_id ^ target)
    ][3:4]
    # A second soft timeout for the same peer changes nothing.
    lookup.on_soft_timeout(slow_node)
    assert (lookup.in_flight, lookup.slow) == (3, 1)
    # The slow peer answers late with the truth: it counts and its contacts are used.
    lookup.on_response(slow_node, world.oracle(slow_node, target))
    assert lookup.slow == 0
    assert lookup.in_flight == 3
    assert state_of(lookup, slow_node) is CandidateState.RESPONDED
    nxt = lookup.next_queries()
    assert nxt == []  # slots are full (3 in flight)
    for c in first[1:] + again:
        lookup.on_response(c.node_id, [])
    drive(lookup, world, world.oracle, random.Random(3))
    assert result_ids(lookup) == truth
    assert lookup.hops == 2


def test_random_slowness_keeps_invariants() -> None:
    for seed in range(6):
        world = World(300, 100 + seed)
        rng = random.Random(seed)
        target = NodeId.random(rng)
        lookup = Lookup(target, world.own, 20, 3, world.far_seeds(target, 3))
        stats = drive(lookup, world, world.oracle, rng, p_slow=0.3)
        got = result_ids(lookup)
        # Whatever was slow, the answer is sorted, unique, and made of responders only.
        assert got == sorted(set(got), key=lambda n: n ^ target)
        for nid in got:
            cand = lookup.candidate(nid)
            assert cand is not None
            assert cand.state is CandidateState.RESPONDED
        assert stats.max_in_flight <= 3
        assert len(got) == 20


# --- failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_failures_are_excluded_from_results(seed: int) -> None:
    world = World(300, 200 + seed, k=8)
    rng = random.Random(seed)
    answer = kademlia_answers(world, 8)
    world.dead = set(rng.sample(world.ids, 60))
    target = NodeId.random(rng)
    # Make sure some of the true closest are dead.
    world.dead.update(world.truth(target, 3))
    live_seeds = [c for c in world.far_seeds(target, 10) if c.node_id not in world.dead][:3]
    lookup = Lookup(target, world.own, 8, 3, live_seeds)
    stats = drive(lookup, world, answer, rng)
    got = result_ids(lookup)
    assert not set(got) & world.dead
    # The k closest live nodes the lookup heard of, nothing else.
    heard = stats.heard | {c.node_id for c in live_seeds}
    expected = sorted((n for n in heard if n not in world.dead), key=lambda n: n ^ target)[:8]
    assert got == expected
    assert len(got) == 8
    # Dead nodes still fill the answers' slots, so the truth among live nodes may be out of
    # reach; the nearest live one is always found.
    assert got[0] == world.truth(target, 1, live_only=True)[0]
    for nid in world.truth(target, 3):
        cand = lookup.candidate(nid)
        assert cand is not None
        # Heard of and asked; never answered (failed, or still slow when the lookup ended).
        assert cand.state in (CandidateState.FAILED, CandidateState.SLOW)


def test_failure_states() -> None:
    world = World(20, 15)
    target = NodeId.random(world.rng)
    seeds = [world.contacts[n] for n in world.ids[:5]]
    lookup = Lookup(target, world.own, k=3, alpha=2, seeds=seeds)
    a, b = (c.node_id for c in lookup.next_queries())
    lookup.on_failure(a)
    assert lookup.in_flight == 1
    lookup.on_soft_timeout(b)
    assert (lookup.in_flight, lookup.slow) == (0, 1)
    lookup.on_failure(b)
    assert (lookup.in_flight, lookup.slow) == (0, 0)
    c, d = (x.node_id for x in lookup.next_queries())
    lookup.on_response(c, [])
    lookup.on_failure(c)  # a hard timeout after the answer must not undo it
    cand = lookup.candidate(c)
    assert cand is not None
    assert cand.state is CandidateState.RESPONDED
    assert lookup.responses == 1
    lookup.on_response(c, [])  # duplicate answers are ignored
    assert lookup.responses == 1
    assert lookup.in_flight == 1
    assert d not in result_ids(lookup)


def test_a_departing_peer_refers_but_is_never_among_the_closest() -> None:
    world = World(30, 17)
    target = NodeId.random(world.rng)
    truth = world.truth(target, 30)
    nearest = world.contacts[truth[0]]
    far = [world.contacts[n] for n in truth[-3:]]
    lookup = Lookup(target, world.own, k=3, alpha=1, seeds=far[:1])
    (first,) = lookup.next_queries()
    lookup.on_departing(first.node_id, [nearest], b"tok")  # leaving, but it knows the way
    assert lookup.responses == 1 and lookup.in_flight == 0
    cand = lookup.candidate(first.node_id)
    assert cand is not None and cand.state is CandidateState.FAILED
    (second,) = lookup.next_queries()
    assert second == nearest  # its referral is used
    lookup.on_response(nearest.node_id, [])
    lookup.on_departing(nearest.node_id, [])  # too late to undo an answer
    assert first.node_id not in result_ids(lookup)
    assert result_ids(lookup) == [nearest.node_id]


def test_unknown_peers_are_ignored() -> None:
    world = World(20, 16)
    target = NodeId.random(world.rng)
    lookup = Lookup(target, world.own, 3, 2, [world.contacts[world.ids[0]]])
    lookup.next_queries()
    stranger = world.ids[5]
    lookup.on_response(stranger, [world.contacts[world.ids[1]]])
    lookup.on_soft_timeout(stranger)
    lookup.on_failure(stranger)
    assert lookup.responses == 0
    assert (lookup.in_flight, lookup.slow) == (1, 0)
    assert lookup.candidate(world.ids[1]) is None


# --- is_done -----------------------------------------------------------------------------


def test_is_done_without_seeds() -> None:
    lookup = Lookup(NodeId(1), NodeId(2), 20, 3, [])
    assert lookup.is_done
    assert lookup.next_queries() == []
    assert lookup.closest_responded() == []
    assert lookup.hops == 0


def test_is_done_when_k_closest_answered_even_with_farther_candidates() -> None:
    world = World(30, 17)
    target = NodeId.random(world.rng)
    ordered = world.truth(target, 30)
    lookup = Lookup(target, world.own, k=2, alpha=2, seeds=[world.contacts[n] for n in ordered])
    q = [c.node_id for c in lookup.next_queries()]
    assert q == ordered[:2]
    assert not lookup.is_done
    lookup.on_response(q[0], [])
    assert not lookup.is_done
    lookup.on_response(q[1], [])
    assert lookup.is_done  # 28 farther candidates were never asked
    assert lookup.queries_sent == 2


def test_is_done_waits_for_slow_peers_when_nobody_answered() -> None:
    world = World(10, 18)
    target = NodeId.random(world.rng)
    lookup = Lookup(target, world.own, k=3, alpha=3, seeds=[world.contacts[world.ids[0]]])
    (only,) = lookup.next_queries()
    assert not lookup.is_done
    lookup.on_soft_timeout(only.node_id)
    assert not lookup.is_done  # the only hope is slow, not gone
    assert lookup.next_queries() == []
    lookup.on_failure(only.node_id)
    assert lookup.is_done  # everyone failed: done, empty-handed
    assert lookup.closest_responded() == []


def test_is_done_when_a_failure_leaves_the_answered_ones() -> None:
    world = World(10, 19)
    target = NodeId.random(world.rng)
    ordered = world.truth(target, 3)
    lookup = Lookup(target, world.own, k=3, alpha=3, seeds=[world.contacts[n] for n in ordered])
    a, b, c = (x.node_id for x in lookup.next_queries())
    lookup.on_response(a, [])
    lookup.on_response(c, [])
    assert not lookup.is_done
    lookup.on_failure(b)
    assert lookup.is_done
    assert result_ids(lookup) == [a, c]


def test_a_slow_peer_among_the_k_closest_is_awaited_until_given_up() -> None:
    world = World(10, 20)
    target = NodeId.random(world.rng)
    ordered = world.truth(target, 4)
    lookup = Lookup(target, world.own, k=3, alpha=3, seeds=[world.contacts[n] for n in ordered])
    a, b, c = (x.node_id for x in lookup.next_queries())
    lookup.on_soft_timeout(b)
    (d,) = (x.node_id for x in lookup.next_queries())  # its slot went to the fourth
    for peer in (a, c, d):
        lookup.on_response(peer, [])
    assert not lookup.is_done  # b is slow, not gone, and closer than the third answer
    assert lookup.next_queries() == []
    lookup.on_give_up(b)
    assert lookup.is_done
    assert result_ids(lookup) == [a, c, d]


def test_a_slow_peer_that_answers_within_its_grace_is_in_the_result() -> None:
    world = World(10, 21)
    target = NodeId.random(world.rng)
    ordered = world.truth(target, 4)
    lookup = Lookup(target, world.own, k=3, alpha=3, seeds=[world.contacts[n] for n in ordered])
    a, b, c = (x.node_id for x in lookup.next_queries())
    lookup.on_soft_timeout(b)
    (d,) = (x.node_id for x in lookup.next_queries())
    for peer in (a, c, d):
        lookup.on_response(peer, [])
    lookup.on_response(b, [])
    assert lookup.is_done
    assert result_ids(lookup) == [a, b, c]


def test_a_slow_peer_beyond_the_k_closest_is_not_awaited() -> None:
    world = World(10, 22)
    target = NodeId.random(world.rng)
    ordered = world.truth(target, 4)
    lookup = Lookup(target, world.own, k=2, alpha=2, seeds=[world.contacts[n] for n in ordered])
    a, b = (x.node_id for x in lookup.next_queries())
    lookup.on_response(a, [])
    lookup.on_response(b, [])
    assert lookup.is_done  # the two farther seeds, whatever their state, do not matter


def test_finish_ends_the_lookup() -> None:
    world = World(10, 20)
    target = NodeId.random(world.rng)
    lookup = Lookup(target, world.own, 3, 1, [world.contacts[n] for n in world.ids])
    lookup.next_queries()
    assert not lookup.is_done
    lookup.finish()
    assert lookup.is_done
    assert lookup.next_queries() == []


# --- hops and bookkeeping ----------------------------------------------------------------


def test_hops_follow_the_referral_chain() -> None:
    own = NodeId(0)
    target = NodeId(2**256 - 1)
    # Each node is closer to the target than the one that referred it.
    a, b, c = (Contact(NodeId(target ^ d), "10.0.0.1", p) for d, p in ((1000, 1), (100, 2), (1, 3)))
    lookup = Lookup(target, own, k=1, alpha=1, seeds=[a])
    assert lookup.next_queries() == [a]
    lookup.on_response(a.node_id, [b])
    assert lookup.next_queries() == [b]
    lookup.on_response(b.node_id, [c])
    assert lookup.next_queries() == [c]
    assert not lookup.is_done
    lookup.on_response(c.node_id, [a, b], token=b"t")
    assert lookup.is_done
    assert [x.contact for x in lookup.closest_responded()] == [c]
    assert lookup.closest_responded()[0].token == b"t"
    hops = {x: hop_of(lookup, x.node_id) for x in (a, b, c)}
    assert hops == {a: 1, b: 2, c: 3}
    assert lookup.hops == 3
    assert lookup.queries_sent == 3
    # Re-learning a known contact does not change its hop.
    lookup.add_contacts([a], hop=9)
    assert hop_of(lookup, a.node_id) == 1


def test_candidate_list_is_bounded() -> None:
    world = World(400, 21)
    target = NodeId.random(world.rng)
    lookup = Lookup(target, world.own, k=5, alpha=3, seeds=[], max_candidates=40)
    lookup.add_contacts(world.contacts.values(), hop=1)
    q = lookup.next_queries()
    # Only the 40 closest survive, so the first queries are the three global closest.
    assert [c.node_id for c in q] == world.truth(target, 3)
    known = [n for n in world.ids if lookup.candidate(n) is not None]
    assert sorted(known, key=lambda n: n ^ target) == world.truth(target, 40)


def test_closest_responded_with_count_zero_is_empty() -> None:
    world = World(10, 22)
    target = NodeId.random(world.rng)
    lookup = Lookup(target, world.own, 3, 3, [world.contacts[n] for n in world.ids[:3]])
    for c in lookup.next_queries():
        lookup.on_response(c.node_id, [])
    assert len(lookup.closest_responded()) == 3
    assert lookup.closest_responded(0) == []


def test_candidates_in_order_stay_aligned_with_their_distances() -> None:
    """The scans walk ``_sorted``: it must hold exactly the candidates of ``_distances``,
    in the same order, through additions past ``max_candidates`` (the farthest idle one
    dropped), answers, failures and slow peers."""
    rng = random.Random(11)
    world = World(600, seed=4)
    target = NodeId.random(rng)
    lookup = Lookup(target, world.own, 8, 3, [], max_candidates=40)

    def aligned() -> None:
        assert [c.distance for c in lookup._sorted] == lookup._distances
        assert all(lookup._by_distance[c.distance] is c for c in lookup._sorted)
        assert len(lookup._by_distance) == len(lookup._distances)

    for _ in range(60):
        batch = rng.sample(world.ids, 20)
        lookup.add_contacts([world.contacts[n] for n in batch], hop=2)
        aligned()
        for contact in lookup.next_queries():
            outcome = rng.randrange(3)
            if outcome == 0:
                lookup.on_response(contact.node_id, [], address=contact.address)
            elif outcome == 1:
                lookup.on_failure(contact.node_id, contact.address)
            else:
                lookup.on_soft_timeout(contact.node_id, contact.address)
        aligned()
    assert len(lookup._distances) == 40
