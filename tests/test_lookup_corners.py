"""The lookup's timing corners, driven by hand event by event (core/lookup.py,
core/lookup_disjoint.py).

The property test in test_lookup_termination.py shows every lookup ends; these pin down
what the lookup does in the rarer orders of events: an address named for a node that failed
for good, or one already tried; a flood of vouched addresses; a slow node heard at a new
address; a second failure of a failed node; a node another path failed for good; a departing
answer from a node that belongs to another path, or that no path asked.
"""

from __future__ import annotations

from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import MAX_HEARD, Candidate, CandidateState, Lookup
from nautilus_kad.core.lookup_disjoint import DisjointLookup
from nautilus_kad.core.messages import Contact

TARGET, OWN = NodeId(0), NodeId(1 << 255)
X, Y, W = NodeId(4), NodeId(64), NodeId(512)
X_REAL, X_OTHER = ("10.0.0.1", 4000), ("10.0.0.1", 5001)
Y_ADDR, W_ADDR = ("10.0.0.2", 4000), ("10.0.0.3", 4000)


def _cand(lookup: Lookup, node_id: NodeId) -> Candidate:
    cand = lookup.candidate(node_id)
    assert cand is not None
    return cand


def _single(alpha: int = 2, seeds: list[Contact] | None = None) -> Lookup:
    seeds = seeds or [Contact(X, *X_REAL), Contact(Y, *Y_ADDR)]
    return Lookup(TARGET, OWN, len(seeds), alpha, seeds)


def test_a_node_failed_for_good_is_not_tried_at_another_address() -> None:
    """An error answer fails X for good: an address heard for it later is ignored."""
    lookup = _single(alpha=1)
    assert lookup.next_queries() == [Contact(X, *X_REAL)]
    lookup.on_failure(X, X_REAL, final=True)
    assert lookup.next_queries() == [Contact(Y, *Y_ADDR)]
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    x = _cand(lookup, X)
    assert x.state is CandidateState.FAILED and x.final
    assert x.heard is None  # not even remembered
    assert lookup.next_queries() == []
    assert lookup.is_done and [c.contact.node_id for c in lookup.closest_responded()] == [Y]


def test_a_node_that_timed_out_is_tried_at_another_address() -> None:
    """Control: after a hard timeout (not final) the address heard later is tried."""
    lookup = _single(alpha=1)
    assert lookup.next_queries() == [Contact(X, *X_REAL)]
    lookup.on_failure(X, X_REAL)
    assert lookup.next_queries() == [Contact(Y, *Y_ADDR)]
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    assert _cand(lookup, X).state is CandidateState.NEW
    assert lookup.next_queries() == [Contact(X, *X_OTHER)]
    assert _cand(lookup, X).tried == [X_REAL]


def test_an_address_already_tried_is_not_heard_again() -> None:
    """X moved from its first address to another; a peer naming the first one again does
    not bring it back: when X is silent at the second too, it just goes slow."""
    lookup = _single(alpha=3, seeds=[Contact(X, *X_REAL), Contact(Y, *Y_ADDR), Contact(W, *W_ADDR)])
    assert len(lookup.next_queries()) == 3
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    lookup.on_soft_timeout(X, X_REAL)  # silent: switch to the address Y named
    x = _cand(lookup, X)
    assert x.contact.address == X_OTHER and x.tried == [X_REAL] and x.heard == {}
    assert lookup.next_queries() == [Contact(X, *X_OTHER)]
    lookup.on_response(W, [Contact(X, *X_REAL)], b"", W_ADDR)  # the old address again
    assert x.heard == {} and x.tried == [X_REAL]
    lookup.on_soft_timeout(X, X_OTHER)
    assert x.state is CandidateState.SLOW and lookup.slow == 1
    assert lookup.next_queries() == []  # X@real is never asked again


def test_a_full_table_of_vouched_addresses_ignores_one_more() -> None:
    """Eight addresses each named twice fill X's table; a ninth is not remembered. One named
    once only is replaced by the newcomer (a flood of single lies cannot crowd out the rest)."""
    vouched = [("10.9.0.1", 6000 + i) for i in range(MAX_HEARD)]
    lookup = _single()
    lookup.next_queries()
    answer = [Contact(X, *a) for a in vouched for _ in range(2)]
    lookup.on_response(Y, [*answer, Contact(X, "10.9.0.1", 7000)], b"", Y_ADDR)
    x = _cand(lookup, X)
    assert x.heard == dict.fromkeys(vouched, 2)
    # Control: with one address named only once, the newcomer takes its place.
    lookup2 = _single()
    lookup2.next_queries()
    single = [Contact(X, *a) for a in vouched[:-1] for _ in range(2)]
    lookup2.on_response(
        Y, [*single, Contact(X, *vouched[-1]), Contact(X, "10.9.0.1", 7000)], b"", Y_ADDR
    )
    heard = _cand(lookup2, X).heard
    assert heard is not None and ("10.9.0.1", 7000) in heard and vouched[-1] not in heard
    assert len(heard) == MAX_HEARD


def test_a_slow_node_heard_at_a_new_address_is_asked_there_at_once() -> None:
    """X is slow at its address; an answer names it elsewhere: the slow count drops and X is
    asked at the new address right away."""
    lookup = _single()
    assert lookup.next_queries() == [Contact(X, *X_REAL), Contact(Y, *Y_ADDR)]
    lookup.on_soft_timeout(X, X_REAL)
    assert lookup.slow == 1 and lookup.in_flight == 1
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    x = _cand(lookup, X)
    assert lookup.slow == 0 and lookup.in_flight == 0
    assert x.state is CandidateState.NEW and x.contact.address == X_OTHER
    assert lookup.next_queries() == [Contact(X, *X_OTHER)]
    assert not lookup.is_done
    lookup.on_response(X, [], b"", X_REAL)  # the old address answers after all: it counts
    assert x.state is CandidateState.RESPONDED and x.contact.address == X_REAL
    assert lookup.in_flight == 0 and lookup.slow == 0 and lookup.is_done


def test_a_second_failure_of_a_failed_node_changes_no_count() -> None:
    """X timed out (failed, not for good); an error answer after that makes it final but
    counts nothing twice, and a later address for it is then ignored."""
    lookup = _single()
    lookup.next_queries()
    lookup.on_failure(X, X_REAL)
    assert lookup.in_flight == 1
    lookup.on_failure(X, X_REAL)  # the same failure twice: nothing changes
    x = _cand(lookup, X)
    assert lookup.in_flight == 1 and not x.final
    lookup.on_failure(X, X_REAL, final=True)
    assert lookup.in_flight == 1 and lookup.slow == 0
    assert x.state is CandidateState.FAILED and x.final
    lookup.on_failure(X, X_REAL)  # a later non-final failure does not undo it
    assert x.final
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    assert x.heard is None and lookup.next_queries() == []


def _two_paths() -> tuple[DisjointLookup, Lookup, Lookup]:
    lookup = DisjointLookup(TARGET, OWN, 2, 1, [Contact(X, *X_REAL), Contact(Y, *Y_ADDR)], paths=2)
    a, b = lookup.paths
    assert lookup.next_queries() == [Contact(X, *X_REAL), Contact(Y, *Y_ADDR)]
    return lookup, a, b


def test_a_node_another_path_failed_for_good_is_never_asked() -> None:
    """Path A's X answered with an error (final); path B hears X at another address: B marks
    it failed for good without asking."""
    lookup, a, b = _two_paths()
    lookup.on_failure(X, X_REAL, final=True)
    assert _cand(a, X).final
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    assert lookup.next_queries() == []
    bx = _cand(b, X)
    assert bx.state is CandidateState.FAILED and bx.final
    assert b.queried == [Y] and lookup.is_done


def test_a_node_another_path_timed_out_on_is_asked_elsewhere() -> None:
    """Control: A's X only timed out; B asks it at the address B heard."""
    lookup, a, b = _two_paths()
    lookup.on_failure(X, X_REAL)
    assert not _cand(a, X).final
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    assert lookup.next_queries() == [Contact(X, *X_OTHER)]
    assert b.queried == [Y, X]


def test_a_departing_answer_from_a_node_of_another_path_fails_it_here() -> None:
    """A asked X and went slow; B took X over at another address; X answers A. Its
    departing answer to B's request then fails X for good on B, and B uses none of it."""
    lookup, a, b = _two_paths()
    lookup.on_soft_timeout(X, X_REAL)
    lookup.on_response(Y, [Contact(X, *X_OTHER)], b"", Y_ADDR)
    assert lookup.next_queries() == [Contact(X, *X_OTHER)]
    assert b.in_flight == 1
    lookup.on_response(X, [], b"", X_REAL)
    assert _cand(a, X).state is CandidateState.RESPONDED
    lookup.on_departing(X, [Contact(W, *W_ADDR)], b"", X_OTHER)
    bx = _cand(b, X)
    assert bx.state is CandidateState.FAILED and bx.final
    assert b.in_flight == 0 and b.slow == 0
    assert a.candidate(W) is None and b.candidate(W) is None
    assert _cand(a, X).state is CandidateState.RESPONDED  # A keeps X's answer
    assert lookup.is_done


def test_a_departing_answer_from_a_node_nobody_asked_is_ignored() -> None:
    lookup, a, b = _two_paths()
    stranger = NodeId(2)
    lookup.on_departing(stranger, [Contact(W, *W_ADDR)], b"", ("10.0.0.9", 4000))
    assert all(p.candidate(stranger) is None and p.candidate(W) is None for p in (a, b))
    assert (a.in_flight, b.in_flight) == (1, 1) and lookup.next_queries() == []
