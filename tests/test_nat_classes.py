"""The NAT class a node keeps (core/nat.py): derived again only when its inputs moved.

Every answer to one of our requests is a vote, and most votes repeat what their network
said before. :class:`NatState` therefore re-derives the class only when the votes, the
adopted IP or the bound address changed, or when a live vote aged out. These tests hold
that shortcut to the plain rule: after every vote and every timer run, the class is what
deriving it from scratch, at that moment, would give.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.messages import Address
from nautilus_kad.core.nat import ClassChange, NatState
from nautilus_kad.core.natclass import NatClass, classify
from nautilus_kad.core.natconfig import NatConfig

CFG = NatConfig(vote_min_observers=2, class_min_observers=2, vote_window=100.0)
WAN_IPS = ("198.51.100.7", "203.0.113.9")
WAN_PORTS = (40000, 40001, 40002)


def from_scratch(nat: NatState, before: NatClass, now: float) -> NatClass:
    """The rule, applied to the live votes at ``now`` (as it was before the shortcut):
    too few live votes of the adopted IP keep the class they showed."""
    voter = nat.voters[4]
    observations = [seen for _, seen in voter.observations(now)]
    of_ip = sum(1 for host, _ in observations if host == voter.ip)
    if of_ip < CFG.class_min_observers and voter.ip is not None:
        return before
    return classify(observations, voter.ip, nat.local, CFG.class_min_observers)


step = st.tuples(
    st.integers(0, 5),  # observer network
    st.integers(0, 1),  # which WAN IP it saw
    st.integers(0, 2),  # which port it saw
    st.sampled_from([0.0, 1.0, 10.0, 30.0, 99.0, 100.0, 150.0]),  # time passing first
    st.booleans(),  # a timer run instead of a vote
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, min_size=1, max_size=60), st.booleans())
def test_the_class_is_what_the_live_votes_show(
    steps: list[tuple[int, int, int, float, bool]], public: bool
) -> None:
    local: Address | None = (WAN_IPS[0], WAN_PORTS[0]) if public else None
    nat = NatState(CFG, random.Random(1), 0.0, local=local)
    now = 0.0
    expected = NatClass.UNKNOWN
    for net, ip, port, wait, timer in steps:
        now += wait
        voter = nat.voters[4]
        adopted = (voter.ip, voter.address)
        if timer:  # derives the class again only when expired votes changed the address
            nat.handle_timer(now)
            if (voter.ip, voter.address) != adopted:
                expected = from_scratch(nat, expected, now)
        else:
            nat.observed((f"192.0.{net}.10", 4000), (WAN_IPS[ip], WAN_PORTS[port]), now)
            expected = from_scratch(nat, expected, now)
        assert nat.classes[4] is expected, (now, nat.voters[4].observations(now))


def test_a_repeated_vote_after_an_old_one_aged_out_is_classified_again() -> None:
    """No vote comes or goes (a repeat too soon to count), yet the class must follow time:
    once one network's vote ages out, the live votes show another class."""
    nat = NatState(CFG, random.Random(1), 0.0)
    a, b = (WAN_IPS[0], WAN_PORTS[0]), (WAN_IPS[0], WAN_PORTS[1])
    nat.observed(("192.0.0.10", 4000), a, 0.0)
    nat.observed(("192.0.1.10", 4000), a, 10.0)
    nat.observed(("192.0.2.10", 4000), b, 80.0)
    assert nat.classes[4] is NatClass.ENDPOINT_INDEPENDENT  # two of three saw port a
    version = nat.voters[4].version
    # At 101 the vote of network 0 (cast at 0) is no longer live: a and b, one each.
    nat.observed(("192.0.2.10", 4000), b, 101.0)  # a repeat 21 s after: not counted
    assert nat.voters[4].version == version  # only time passed
    assert nat.classes[4] is NatClass.ENDPOINT_DEPENDENT
    # At 111 network 1's vote is gone too: one vote is too few, the class is kept.
    nat.observed(("192.0.2.10", 4000), b, 102.0)
    nat.handle_timer(111.0)
    nat.observed(("192.0.2.10", 4000), b, 111.0)
    assert nat.classes[4] is NatClass.ENDPOINT_DEPENDENT
    classes = [change.new for change in nat.changes if isinstance(change, ClassChange)]
    assert classes == [NatClass.ENDPOINT_INDEPENDENT, NatClass.ENDPOINT_DEPENDENT]


def test_the_bound_address_counts_as_an_input() -> None:
    """The same votes classify as PUBLIC once the node learns it is bound to that very
    address (the engine sets ``local`` on every answer)."""
    nat = NatState(CFG, random.Random(1), 0.0)
    for net in range(3):
        nat.observed((f"192.0.{net}.10", 4000), (WAN_IPS[0], WAN_PORTS[0]), float(net))
    assert nat.classes[4] is NatClass.ENDPOINT_INDEPENDENT
    nat.local = (WAN_IPS[0], WAN_PORTS[0])
    nat.observed(("192.0.0.10", 4000), (WAN_IPS[0], WAN_PORTS[0]), 3.0)  # a repeat
    assert nat.classes[4] is NatClass.PUBLIC
