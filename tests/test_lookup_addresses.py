"""A node id is not its address: lookups try other addresses heard for a silent id, and a
disjoint path may take over a node another path asked at a false address (core/lookup.py)."""

from __future__ import annotations

from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import MAX_ADDRESSES, MAX_VOUCHED, CandidateState, Lookup
from nautilus_kad.core.lookup_disjoint import DisjointLookup
from nautilus_kad.core.messages import Contact, FindNode
from nautilus_kad.sim import SimAuthenticator, Simulation

TARGET = NodeId(0)
OWN = NodeId(1 << 200)


def at(node_id: int, port: int, host: str = "10.0.0.1") -> Contact:
    return Contact(NodeId(node_id), host, port)


def test_a_failed_id_is_tried_at_another_address_heard_for_it() -> None:
    x, helper = NodeId(5), NodeId(9)
    lookup = Lookup(TARGET, OWN, 2, 1, [at(x, 6666), at(helper, 4000)])
    assert lookup.next_queries() == [at(x, 6666)]  # the false address came first
    lookup.on_failure(x, ("10.0.0.1", 6666))
    assert lookup.candidate(x).state is CandidateState.FAILED  # type: ignore[union-attr]
    assert lookup.next_queries() == [at(helper, 4000)]
    lookup.on_response(helper, [at(x, 4000)])  # an honest node knows the real address
    assert lookup.next_queries() == [at(x, 4000)]
    lookup.on_response(x, [], address=("10.0.0.1", 4000))
    assert lookup.is_done
    assert [c.contact for c in lookup.closest_responded()] == [at(x, 4000), at(helper, 4000)]
    assert lookup.queried == [x, helper, x]


def test_a_slow_id_with_a_spare_address_is_tried_there_at_once() -> None:
    x, y = NodeId(5), NodeId(9)
    lookup = Lookup(TARGET, OWN, 2, 2, [at(x, 6666), at(y, 4000)])
    assert lookup.next_queries() == [at(x, 6666), at(y, 4000)]
    lookup.on_response(y, [at(x, 4000)])  # heard while the first request is in flight
    assert lookup.next_queries() == []  # a spare, not a second request yet
    lookup.on_soft_timeout(x, ("10.0.0.1", 6666))
    assert lookup.next_queries() == [at(x, 4000)]  # no waiting for the hard timeout
    # The old address's timeouts no longer concern it; a late answer from it still counts.
    lookup.on_give_up(x, ("10.0.0.1", 6666))
    lookup.on_failure(x, ("10.0.0.1", 6666))
    assert lookup.candidate(x).state is CandidateState.IN_FLIGHT  # type: ignore[union-attr]
    lookup.on_response(x, [], address=("10.0.0.1", 6666))
    assert lookup.candidate(x).contact == at(x, 6666)  # type: ignore[union-attr]
    assert lookup.is_done and lookup.in_flight == 0 and lookup.slow == 0


def test_addresses_tried_per_id_are_bounded_and_an_error_answer_ends_the_retries() -> None:
    x, y = NodeId(5), NodeId(9)
    lookup = Lookup(TARGET, OWN, 2, 1, [at(x, 5000), at(y, 4000)])
    lookup.add_contacts([at(x, p) for p in range(5001, 5010)], hop=2)  # a flood of lies
    sent = []
    for _ in range(10):
        chosen = [c for c in lookup.next_queries() if c.node_id == x]
        if not chosen:
            break
        sent += chosen
        lookup.on_failure(x, chosen[0].address)
    assert len(sent) == MAX_ADDRESSES
    assert lookup.candidate(x).state is CandidateState.FAILED  # type: ignore[union-attr]
    lookup.add_contacts([at(x, 4000)], hop=3)
    assert lookup.candidate(x).state is CandidateState.FAILED  # type: ignore[union-attr]
    lookup.on_response(y)  # (asked once x had no address left)
    # Past the budget, an address two peers named is still tried (liars that each tell
    # their own lie cannot use up the tries of the one address honest peers agree on).
    lookup.add_contacts([at(x, 4000)], hop=3)
    assert lookup.next_queries() == [at(x, 4000)]
    lookup.on_response(x, [], address=("10.0.0.1", 4000))
    assert lookup.candidate(x).state is CandidateState.RESPONDED  # type: ignore[union-attr]
    # An error answer is the node itself refusing: no other address is tried.
    other = Lookup(TARGET, OWN, 2, 1, [at(x, 5000)])
    other.add_contacts([at(x, 4000)], hop=2)
    assert other.next_queries() == [at(x, 5000)]
    other.on_failure(x, ("10.0.0.1", 5000), final=True)
    assert other.next_queries() == [] and other.is_done


def test_a_path_takes_over_a_node_another_path_asked_at_a_false_address() -> None:
    x, a_seed, b_seed = NodeId(5), NodeId(1 << 20), NodeId(1 << 21)
    lookup = DisjointLookup(TARGET, OWN, 2, 1, [at(a_seed, 4000), at(b_seed, 4000)], paths=2)
    path_a, path_b = lookup.paths
    assert lookup.next_queries() == [at(a_seed, 4000), at(b_seed, 4000)]
    lookup.on_response(a_seed, [at(x, 6666)], address=("10.0.0.1", 4000))  # a lie for path A
    assert lookup.next_queries() == [at(x, 6666)]
    lookup.on_response(b_seed, [at(x, 4000)], address=("10.0.0.1", 4000))
    # Path A's request to x is young: path B waits for its outcome instead of giving x up.
    assert lookup.next_queries() == []
    assert path_b.candidate(x).state is CandidateState.NEW  # type: ignore[union-attr]
    lookup.on_soft_timeout(x, ("10.0.0.1", 6666))
    assert lookup.next_queries() == [at(x, 4000)]  # B asks x where A did not
    lookup.on_response(x, [], address=("10.0.0.1", 4000))
    assert path_b.candidate(x).state is CandidateState.RESPONDED  # type: ignore[union-attr]
    # x belongs to path B now: a late answer to A's request does not serve A as well.
    lookup.on_response(x, [], address=("10.0.0.1", 6666))
    assert path_a.candidate(x).state is CandidateState.FAILED  # type: ignore[union-attr]
    lookup.on_give_up(x, ("10.0.0.1", 6666))
    assert lookup.is_done
    assert lookup.closest_responded()[0].contact == at(x, 4000)


def test_the_address_most_peers_named_is_tried_next() -> None:
    x = NodeId(5)
    lookup = Lookup(TARGET, OWN, 2, 1, [at(x, 5000)])
    lookup.add_contacts([at(x, 5001)], hop=2)
    lookup.add_contacts([at(x, 4000)], hop=2)
    lookup.add_contacts([at(x, 4000)], hop=2)
    assert lookup.next_queries() == [at(x, 5000)]  # the first heard goes first
    lookup.on_soft_timeout(x, ("10.0.0.1", 5000))
    assert lookup.next_queries() == [at(x, 4000)]  # then the one two peers named
    assert MAX_VOUCHED > MAX_ADDRESSES


def test_a_path_never_repeats_an_address_another_path_tried() -> None:
    x, a_seed, b_seed = NodeId(5), NodeId(1 << 20), NodeId(1 << 21)
    lookup = DisjointLookup(TARGET, OWN, 2, 1, [at(a_seed, 4000), at(b_seed, 4000)], paths=2)
    path_b = lookup.paths[1]
    lookup.next_queries()
    lookup.on_response(a_seed, [at(x, 6666)], address=("10.0.0.1", 4000))
    lookup.on_response(b_seed, [at(x, 6666)], address=("10.0.0.1", 4000))
    assert lookup.next_queries() == [at(x, 6666)]  # path A's
    lookup.on_failure(x, ("10.0.0.1", 6666))
    assert lookup.next_queries() == []  # B knows only the address that already failed
    assert path_b.candidate(x).state is CandidateState.FAILED  # type: ignore[union-attr]
    assert lookup.is_done


def test_silence_at_another_address_does_not_count_against_a_known_node() -> None:
    """A known node's request from a new address makes the engine PING it there; when
    nothing answers there, the node's entry (at its known address) takes no failure."""
    sim = Simulation(6)
    assert all(op.succeeded for op in sim.grow(30))
    a = sim.nodes[0]
    entry = next(iter(a.engine.table.closest(NodeId(0), 1)))
    x = next(n for n in sim.nodes.values() if n.node_id == entry.node_id)
    auth = SimAuthenticator(x.engine.identity, sim.keyring)
    elsewhere = (x.address[0], 4999)  # x's host, a port where nothing listens
    data = encode_message(FindNode(NodeId(7)), b"12345678", auth, pad_to=400)
    a.engine.receive_datagram(data, elsewhere, sim.now)
    a.flush()
    sim.run_for(5.0)
    known = a.engine.table.get(x.node_id)
    assert known is not None and known.contact.address == x.address
    assert known.failures == 0
    assert a.engine.stats["tx.timeouts.other_address"] >= 1
