"""The external-address vote (core/extaddr.py): quorum of networks, margin, ageing, rate."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.extaddr import ExternalAddressVoter, ip_family, network_of
from nautilus_kad.core.natconfig import NatConfig

CFG = NatConfig()
WAN = ("198.51.100.7", 40000)
FAKE = ("203.0.113.66", 1234)


def observer(n: int, port: int = 4000) -> tuple[str, int]:
    """The n-th honest observer, each in a /24 of its own."""
    return (f"192.0.{n}.10", port)


def test_adopts_only_after_four_networks_agree() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(3):
        assert voter.vote(observer(n), WAN, 0.0) is None
    assert voter.ip is None and voter.address is None
    change = voter.vote(observer(3), WAN, 1.0)
    assert change is not None and change.first and not change.moved
    assert voter.ip == WAN[0] and voter.address == WAN


def test_many_observers_in_one_network_count_once() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(50):
        voter.vote((f"192.0.2.{n + 1}", 4000), WAN, float(n))
    assert voter.ip is None
    assert len(voter) == 1


def test_three_colluders_in_one_network_cannot_move_it() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(6):
        voter.vote(observer(n), WAN, 0.0)
    assert voter.address == WAN
    t = 0.0
    for _ in range(100):  # they repeat their lie for a long time, while honest peers go on
        t += 30.0
        for liar in range(3):
            voter.vote((f"10.66.66.{liar + 1}", 4000), FAKE, t)
        voter.vote(observer(int(t) % 6), WAN, t)
    assert voter.address == WAN
    assert voter.stats["address.changes"] == 0


def test_a_real_change_is_adopted_within_two_windows() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(8):
        voter.vote(observer(n), WAN, 0.0)
    new = ("198.51.100.99", 50000)
    changed_at = 10.0
    t = changed_at
    adopted = None
    while t < changed_at + 2 * CFG.vote_window and adopted is None:
        t += 20.0
        change = voter.vote(observer(int(t / 20) % 8), new, t)
        if change is not None:
            adopted = t
            assert change.moved and change.new_address == new and change.old_address == WAN
    assert adopted is not None
    assert voter.address == new


def test_changes_at_most_once_per_interval() -> None:
    cfg = NatConfig(vote_window=1000.0, vote_change_interval=300.0)
    voter = ExternalAddressVoter(cfg, 4)
    a, b = ("198.51.100.1", 1000), ("198.51.100.2", 2000)
    for n in range(4):
        voter.vote(observer(n), a, 0.0)
    assert voter.address == a
    for n in range(4, 20):  # b wins the vote by far, right away
        voter.vote(observer(n), b, 10.0)
    assert voter.address == a
    voter.vote(observer(30), b, 299.0)
    assert voter.address == a
    change = voter.vote(observer(31), b, 301.0)
    assert change is not None and voter.address == b


def test_margin_over_runner_up_is_needed() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(3):
        voter.vote(observer(n), WAN, 0.0)
        voter.vote(observer(10 + n), FAKE, 0.0)
    voter.vote(observer(3), WAN, 0.0)
    voter.vote(observer(13), FAKE, 0.0)
    assert voter.ip is None  # 3 against 3, then 4 against 3, then 4 against 4: no winner
    for n in range(4, 6):
        voter.vote(observer(n), WAN, 0.0)
    assert voter.ip == WAN[0]  # 6 against 4 is a clear margin


def test_symmetric_nat_gives_the_ip_but_no_port() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(8):
        voter.vote(observer(n), (WAN[0], 30000 + n), 0.0)
    assert voter.ip == WAN[0]
    assert voter.address is None


def test_votes_age_out() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(3):
        voter.vote(observer(n), WAN, 0.0)
    voter.vote(observer(3), WAN, CFG.vote_window + 1)  # the first three have expired
    assert voter.ip is None


def test_wrong_family_and_invalid_addresses_are_refused() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    assert voter.vote(observer(1), ("2001:db8::1", 4000), 0.0) is None
    assert voter.vote(("2001:db8::2", 4000), WAN, 0.0) is None
    assert voter.vote(observer(2), ("0.0.0.0", 4000), 0.0) is None
    assert voter.vote(observer(3), ("224.0.0.1", 4000), 0.0) is None
    assert voter.vote(observer(4), (WAN[0], 0), 0.0) is None
    assert voter.stats["votes.rejected.family"] == 2
    assert voter.stats["votes.rejected.invalid"] == 3
    assert len(voter) == 0


def test_ipv6_observers_are_grouped_by_56() -> None:
    cfg = NatConfig()
    assert network_of("2001:db8:0:ff::1", 24, 56) == network_of("2001:db8:0:1::1", 24, 56)
    assert network_of("2001:db8:0:100::1", 24, 56) != network_of("2001:db8:0:1::1", 24, 56)
    voter = ExternalAddressVoter(cfg, 6)
    me = ("2001:db8:ffff::5", 4000)
    for n in range(4):
        voter.vote((f"2001:db8:0:{n:x}::1", 4000), me, 0.0)
    assert voter.ip is None
    voter.vote(("2001:db8:1::1", 4000), me, 0.0)
    voter.vote(("2001:db8:2::1", 4000), me, 0.0)
    voter.vote(("2001:db8:3::1", 4000), me, 0.0)
    assert voter.address == me
    assert ip_family("::ffff:192.0.2.1") == 4


def test_memory_is_bounded() -> None:
    voter = ExternalAddressVoter(NatConfig(vote_max_observers=16), 4)
    for n in range(1000):
        voter.vote((f"10.{n // 256}.{n % 256}.1", 4000), WAN, float(n) / 100)
    assert len(voter) == 16


addresses = st.tuples(
    st.sampled_from(["198.51.100.1", "198.51.100.2", "203.0.113.9"]),
    st.sampled_from([1000, 2000, 3000]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), addresses, st.floats(0, 50, allow_nan=False)),
        max_size=120,
    )
)
def test_invariants_under_any_votes(votes: list[tuple[int, tuple[str, int], float]]) -> None:
    """Whatever the votes: an adopted address had a quorum of networks when adopted, changes
    are spaced by the interval, and three networks alone never move an adopted address."""
    voter = ExternalAddressVoter(CFG, 4)
    t = 0.0
    changes: list[float] = []
    for who, seen, step in votes:
        t += step
        change = voter.vote(observer(who), seen, t)
        if change is not None:
            live = [s for _, s in voter.observations(t)]
            assert voter.ip is not None
            assert sum(1 for s in live if s[0] == voter.ip) >= CFG.vote_min_observers
            if change.moved:
                changes.append(t)
    assert all(b - a >= CFG.vote_change_interval for a, b in itertools.pairwise(changes))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), addresses), max_size=200))
def test_three_networks_never_move_an_adopted_address(
    lies: list[tuple[int, tuple[str, int]]],
) -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(10, 14):
        voter.vote(observer(n), WAN, 0.0)
    for i, (liar, seen) in enumerate(lies):
        voter.vote(observer(liar), seen, 1.0 + i)
    assert voter.address == WAN


def test_the_vote_book_keeps_what_an_ordered_dict_kept() -> None:
    """The votes live in a plain dict (re-cast: pop and re-insert; full: the first key
    goes); against the OrderedDict it replaced, kept here as the model, the live votes
    (and their order) are the same after every vote, through repeats, replacements,
    ageing and evictions past ``vote_max_observers``."""
    import random  # noqa: PLC0415
    from collections import OrderedDict  # noqa: PLC0415

    cfg = NatConfig(vote_max_observers=8, vote_window=40.0)
    rng = random.Random(7)
    voter = ExternalAddressVoter(cfg, 4)
    model: OrderedDict[str, tuple[tuple[str, int], float, str]] = OrderedDict()
    seen_choices = [WAN, FAKE, (WAN[0], 40001)]
    t = 0.0
    for _ in range(4000):
        t += rng.random() * 3
        who = observer(rng.randrange(20))
        seen = rng.choice(seen_choices) if rng.random() < 0.3 else WAN
        voter.vote(who, (seen[0], seen[1]), t)  # a fresh tuple, as decoded from a datagram
        group = network_of(who[0], cfg.vote_prefix_v4, cfg.vote_prefix_v6)
        assert group is not None
        previous = model.get(group)
        if not (previous is not None and previous[0] == seen and t - previous[1] < 10.0):
            model.pop(group, None)
            model[group] = (seen, t, who[0])
            if len(model) > cfg.vote_max_observers:
                model.popitem(last=False)
            for g in [g for g, (_, when, _) in model.items() if when < t - cfg.vote_window]:
                del model[g]
        else:
            assert voter.stats["votes.repeated"]
        assert voter.observations(t) == [(w, s) for s, when, w in model.values()
                                         if when >= t - cfg.vote_window]  # fmt: skip
        assert len(voter) == len(model)


def test_votes_for_the_adopted_address_share_its_tuple() -> None:
    voter = ExternalAddressVoter(CFG, 4)
    for n in range(10):
        voter.vote(observer(n), (WAN[0], WAN[1]), float(n))  # fresh tuples, as decoded
    seen = [s for _, s in voter.observations(10.0)]
    assert seen == [WAN] * 10
    assert all(s is voter.address for s in seen[4:])  # cast after the adoption
    assert len({id(s) for s in seen}) == 4
