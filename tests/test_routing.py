"""The k-bucket routing table (core/routing.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.buckets import RttEstimator
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.ids import ID_BITS, NodeId, bucket_index, random_id_in_bucket
from nautilus_kad.core.messages import Contact
from nautilus_kad.core.routing import RoutingTable

OWN = NodeId(0x5A << 248)
SMALL = KadConfig(k=4, replacement_cache_size=3)


def _id_in_bucket(own: int, index: int, rng: random.Random) -> NodeId:
    return random_id_in_bucket(own, index, rng)


def _contact(node_id: NodeId, port: int = 4000) -> Contact:
    return Contact(node_id, "10.0.0.1", port)


def _bucket_contacts(n: int, index: int = 0, seed: int = 1) -> list[Contact]:
    rng = random.Random(seed)
    out: list[Contact] = []
    seen: set[int] = set()
    while len(out) < n:
        nid = _id_in_bucket(OWN, index, rng)
        if nid not in seen:
            seen.add(nid)
            out.append(_contact(nid, 4000 + len(out)))
    return out


def _full_table(config: KadConfig = SMALL, index: int = 0) -> tuple[RoutingTable, list[Contact]]:
    table = RoutingTable(OWN, config, now=0.0)
    members = _bucket_contacts(config.k, index)
    for i, c in enumerate(members):
        assert table.observe(c, float(i)) == (True, None)
    return table, members


# --- adding ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, KadConfig()])
def test_observe_adds_up_to_k_per_bucket(config: KadConfig) -> None:
    table = RoutingTable(OWN, config)
    candidates = _bucket_contacts(config.k + 5, index=0)
    results = [table.observe(c, 1.0) for c in candidates]
    assert results[: config.k] == [(True, None)] * config.k
    assert all(added is False for added, _ in results[config.k :])
    assert len(table) == config.k
    assert table.bucket_sizes() == {0: config.k}
    assert set(table) == set(candidates[: config.k])
    for c in candidates[config.k :]:
        assert c.node_id not in table


def test_buckets_fill_independently() -> None:
    table = RoutingTable(OWN, SMALL)
    for index in (0, 1, 7):
        for c in _bucket_contacts(SMALL.k + 2, index, seed=index):
            table.observe(c, 0.0)
    table.observe(_contact(NodeId(OWN ^ 1)), 0.0)
    table.observe(_contact(NodeId(OWN ^ 1), 4001), 1.0)
    # Bucket 255 holds a single possible id.
    assert table.bucket_sizes() == {0: 4, 1: 4, 7: 4, 255: 1}
    assert len(table) == 13
    for c in table:
        assert table.bucket_of(c.node_id) == bucket_index(OWN, c.node_id)


def test_observe_own_id_is_ignored() -> None:
    table = RoutingTable(OWN, SMALL)
    assert table.observe(_contact(OWN), 0.0) == (False, None)
    assert len(table) == 0
    assert OWN not in table


def test_observe_known_contact_refreshes_and_follows_address() -> None:
    table = RoutingTable(OWN, SMALL)
    c = _bucket_contacts(1)[0]
    table.observe(c, 1.0)
    moved = Contact(c.node_id, "10.9.9.9", 9999)
    assert table.observe(moved, 5.0) == (False, None)
    entry = table.get(c.node_id)
    assert entry is not None
    assert entry.contact == moved
    assert entry.last_seen == 5.0
    assert len(table) == 1


# --- full buckets ------------------------------------------------------------------------


def test_full_bucket_pings_least_recently_seen_only_after_idle() -> None:
    table, members = _full_table()
    newcomers = _bucket_contacts(10, seed=99)
    newcomers = [c for c in newcomers if c not in members]
    idle = SMALL.ping_after_idle
    # members[0] was seen at 0.0: not idle enough yet.
    assert table.observe(newcomers[0], idle - 0.001) == (False, None)
    assert newcomers[0].node_id not in table
    assert table.observe(newcomers[1], idle) == (False, members[0])
    # Seeing members[0] again makes members[1] (seen at 1.0) the least recently seen.
    table.observe(members[0], idle)
    assert table.observe(newcomers[2], idle + 0.999) == (False, None)
    assert table.observe(newcomers[3], idle + 1.0) == (False, members[1])
    assert len(table) == SMALL.k
    assert all(c.node_id not in table for c in newcomers)


def test_full_bucket_stale_entry_gives_way_to_newcomer() -> None:
    table, members = _full_table()
    table.record_failure(members[2].node_id)  # no spare: stays, marked stale
    assert members[2].node_id in table
    newcomer = next(c for c in _bucket_contacts(10, seed=5) if c not in members)
    assert table.observe(newcomer, 10.0) == (True, None)
    assert newcomer.node_id in table
    assert members[2].node_id not in table
    assert len(table) == SMALL.k


def test_record_failure_swaps_freshest_spare_in() -> None:
    table, members = _full_table()
    spares = [c for c in _bucket_contacts(10, seed=7) if c not in members][:2]
    table.observe(spares[0], 10.0)
    table.observe(spares[1], 11.0)
    assert all(s.node_id not in table for s in spares)

    assert table.record_failure(members[0].node_id) == members[0]
    assert members[0].node_id not in table
    assert spares[1].node_id in table  # the freshest spare first
    assert spares[0].node_id not in table

    assert table.record_failure(members[3].node_id) == members[3]
    assert spares[0].node_id in table

    # Spares used up: the next failure only marks the entry stale.
    assert table.record_failure(members[1].node_id) is None
    assert members[1].node_id in table
    entry = table.get(members[1].node_id)
    assert entry is not None
    assert entry.failures == 1
    assert entry.is_stale
    assert len(table) == SMALL.k


def test_a_departing_peer_leaves_at_once_and_the_freshest_spare_takes_its_place() -> None:
    table, members = _full_table()
    spares = [c for c in _bucket_contacts(10, seed=7) if c not in members][:2]
    table.observe(spares[0], 10.0)
    table.observe(spares[1], 11.0)
    assert table.depart(members[2].node_id) == members[2]  # no failures needed
    assert members[2].node_id not in table
    assert spares[1].node_id in table and len(table) == SMALL.k
    # A departing spare is forgotten too: it is never promoted later.
    assert table.depart(spares[0].node_id) is None
    assert table.record_failure(members[0].node_id) is None  # no spare left: only stale
    assert table.depart(members[2].node_id) is None  # gone already


def test_replacement_cache_is_bounded() -> None:
    table, members = _full_table()
    spares = [c for c in _bucket_contacts(20, seed=11) if c not in members][:6]
    for i, s in enumerate(spares):
        table.observe(s, 10.0 + i)
    swapped_in: list[Contact] = []
    for m in members:
        table.record_failure(m.node_id)
        swapped_in.extend(s for s in spares if s.node_id in table and s not in swapped_in)
    # Only replacement_cache_size spares were kept: the most recent, freshest first.
    assert swapped_in == spares[::-1][: SMALL.replacement_cache_size]
    assert members[-1].node_id in table  # the fourth failure found no spare


def test_failure_without_replacement_removes_after_max_failures() -> None:
    config = KadConfig(k=4, max_failures=5)
    table, members = _full_table(config)
    victim = members[1].node_id
    for n in range(1, config.max_failures):
        assert table.record_failure(victim) is None
        entry = table.get(victim)
        assert entry is not None
        assert entry.failures == n
    assert table.record_failure(victim) == members[1]
    assert victim not in table
    assert table.get(victim) is None
    assert len(table) == config.k - 1
    assert table.record_failure(victim) is None  # unknown ids are ignored


@pytest.mark.parametrize("max_failures", [1, 2, 3])
def test_max_failures_is_configurable(max_failures: int) -> None:
    config = KadConfig(k=4, max_failures=max_failures)
    table, members = _full_table(config)
    for _ in range(max_failures - 1):
        assert table.record_failure(members[0].node_id) is None
    assert table.record_failure(members[0].node_id) == members[0]


def test_successful_observe_resets_failures() -> None:
    table, members = _full_table()
    victim = members[0]
    for _ in range(SMALL.max_failures - 1):
        table.record_failure(victim.node_id)
    table.observe(victim, 50.0)
    entry = table.get(victim.node_id)
    assert entry is not None
    assert entry.failures == 0
    assert not entry.is_stale
    for _ in range(SMALL.max_failures - 1):
        assert table.record_failure(victim.node_id) is None
    assert victim.node_id in table
    assert table.record_failure(victim.node_id) == victim


def test_remove() -> None:
    table, members = _full_table()
    assert table.remove(members[0].node_id)
    assert not table.remove(members[0].node_id)
    assert members[0].node_id not in table
    assert len(table) == SMALL.k - 1


def _room_by_scan(table: RoutingTable, node_id: NodeId) -> bool:
    """The old ``has_room_for``: a free slot, or a scan of the full bucket for a stale one."""
    entries = [e for e in table.entries() if table.bucket_of(e.contact.node_id) ==
               table.bucket_of(node_id)]  # fmt: skip
    return len(entries) < table.config.k or any(e.failures for e in entries)


@pytest.mark.parametrize("seed", range(6))
def test_has_room_for_keeps_a_stale_count_equal_to_a_scan(seed: int) -> None:
    """Random observes, failures, departures and removals in a few crowded buckets: after
    every step each bucket's stale count is its number of failed entries, and
    ``has_room_for`` answers what the scan of the bucket answered."""
    rng = random.Random(seed)
    config = KadConfig(k=4, replacement_cache_size=2, max_failures=3)
    table = RoutingTable(OWN, config)
    pool = [_id_in_bucket(OWN, rng.choice((0, 1, 2, 7)), rng) for _ in range(40)]
    stale_seen = 0
    for step in range(3000):
        nid = rng.choice(pool)
        action = rng.random()
        if action < 0.5:
            table.observe(_contact(nid, 4000 + rng.randrange(3)), float(step))
        elif action < 0.85:
            table.record_failure(nid)
        elif action < 0.95:
            table.depart(nid)
        else:
            table.remove(nid)
        for index, bucket in table._buckets.items():
            assert bucket.stale == sum(1 for e in bucket.entries.values() if e.failures), index
            stale_seen += bucket.stale
        probe = rng.choice(pool)
        assert table.has_room_for(probe) == _room_by_scan(table, probe)
    assert stale_seen  # the runs did go through stale entries


# --- closest -----------------------------------------------------------------------------


def _is_stale(table: RoutingTable, node_id: NodeId) -> bool:
    entry = table.get(node_id)
    assert entry is not None
    return entry.is_stale


def _brute_closest(
    table: RoutingTable, target: int, count: int, include_stale: bool = True
) -> list[Contact]:
    everyone = list(table)
    if not include_stale:
        everyone = [c for c in everyone if not _is_stale(table, c.node_id)]
    return sorted(everyone, key=lambda c: c.node_id ^ target)[:count]


@st.composite
def tables(draw: st.DrawFn) -> tuple[RoutingTable, list[NodeId]]:
    own = NodeId(draw(st.integers(0, 2**256 - 1)))
    k = draw(st.integers(1, 8))
    config = KadConfig(k=k, replacement_cache_size=draw(st.integers(0, 3)), max_failures=3)
    table = RoutingTable(own, config)
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    n = draw(st.integers(0, 80))
    ids: list[NodeId] = []
    for _ in range(n):
        # Mostly the shallow buckets (as in a real network), some deep ones.
        index = min(int(rng.expovariate(0.5)), ID_BITS - 1)
        if rng.random() < 0.1:
            index = rng.randrange(ID_BITS)
        ids.append(random_id_in_bucket(own, index, rng))
    for i, nid in enumerate(ids):
        table.observe(Contact(nid, "10.0.0.1", 1 + i), float(i))
    for nid in ids:
        if rng.random() < 0.3:
            table.record_failure(nid)
    return table, ids


@settings(max_examples=300, deadline=None)
@given(tables(), st.data())
def test_closest_matches_brute_force(
    table_ids: tuple[RoutingTable, list[NodeId]], data: st.DataObject
) -> None:
    table, ids = table_ids
    members = [c.node_id for c in table]
    choices = [
        st.integers(0, 2**256 - 1),
        st.just(int(table.own_id)),
        st.integers(0, 2**20).map(lambda x: table.own_id ^ x),
    ]
    if members:
        choices.append(st.sampled_from(members))
        choices.append(st.sampled_from(members).map(lambda m: m ^ 1))
    if ids:
        choices.append(st.sampled_from(ids))
    target = data.draw(st.one_of(choices))
    count = data.draw(st.integers(1, len(members) + 3))
    for include_stale in (True, False):
        got = table.closest(target, count, include_stale=include_stale)
        assert got == _brute_closest(table, target, count, include_stale)


def test_closest_on_empty_table() -> None:
    table = RoutingTable(OWN, SMALL)
    assert table.closest(OWN, 5) == []
    assert table.closest(12345, 5) == []


def test_closest_includes_target_itself_first() -> None:
    table = RoutingTable(OWN, KadConfig())
    contacts = _bucket_contacts(10, 0) + _bucket_contacts(5, 3, seed=2)
    for c in contacts:
        table.observe(c, 0.0)
    for c in contacts:
        assert table.closest(c.node_id, 1) == [c]


def test_closest_skips_stale_only_when_asked() -> None:
    table, members = _full_table()
    table.record_failure(members[0].node_id)
    target = members[0].node_id
    assert table.closest(target, 1) == [members[0]]
    fresh = table.closest(target, 10, include_stale=False)
    assert members[0] not in fresh
    assert len(fresh) == SMALL.k - 1


def test_closest_with_count_zero_is_empty() -> None:
    table, _ = _full_table()
    assert table.closest(OWN, 0) == []


# --- refresh -----------------------------------------------------------------------------


def test_buckets_to_refresh_and_touch() -> None:
    config = KadConfig(refresh_interval=100.0)
    table = RoutingTable(OWN, config, now=0.0)
    assert table.buckets_to_refresh(1000.0) == []  # empty table: nothing to refresh
    rng = random.Random(3)
    for index in (0, 1, 3):
        table.observe(_contact(_id_in_bucket(OWN, index, rng)), 0.0)
    assert table.buckets_to_refresh(99.9) == []
    # Bucket 2 was never populated but lies below the deepest one: it is due too.
    assert table.buckets_to_refresh(100.0) == [0, 1, 2, 3]
    table.touch(_id_in_bucket(OWN, 1, rng), 100.0)
    table.touch(_id_in_bucket(OWN, 2, rng), 100.0)
    table.touch(OWN, 100.0)  # own id has no bucket: no effect, no error
    assert table.buckets_to_refresh(100.0) == [0, 3]
    table.observe(_contact(_id_in_bucket(OWN, 3, rng)), 150.0)  # observing touches too
    assert table.buckets_to_refresh(199.9) == [0]
    assert table.buckets_to_refresh(200.0) == [0, 1, 2]
    assert table.buckets_to_refresh(250.0) == [0, 1, 2, 3]


# --- round-trip times ----------------------------------------------------------------------


def test_soft_timeout_defaults_and_adapts() -> None:
    cfg = KadConfig()
    table, members = _full_table(cfg)
    known = members[0].node_id
    stranger = NodeId(12345)
    default = min(cfg.max_soft_timeout, max(cfg.min_soft_timeout, 2 * cfg.initial_rtt))
    assert table.soft_timeout(known) == pytest.approx(default)
    assert table.soft_timeout(stranger) == pytest.approx(default)
    table.record_rtt(known, 0.1)
    # First sample: srtt = 0.1, rttvar = 0.05, timeout = srtt + 4 * rttvar.
    assert table.soft_timeout(known) == pytest.approx(0.3)
    # Strangers are judged by the network at large, with a margin.
    assert table.soft_timeout(stranger) == pytest.approx(0.6)
    for _ in range(50):
        table.record_rtt(known, 0.001)
    assert table.soft_timeout(known) == pytest.approx(cfg.min_soft_timeout)
    for _ in range(50):
        table.record_rtt(known, 30.0)
    assert table.soft_timeout(known) == pytest.approx(cfg.max_soft_timeout)


def test_soft_timeout_is_per_peer() -> None:
    table, members = _full_table(KadConfig(k=4))
    fast, slow = members[0].node_id, members[1].node_id
    for _ in range(20):
        table.record_rtt(fast, 0.02)
        table.record_rtt(slow, 0.4)
    assert table.soft_timeout(fast) < table.soft_timeout(slow)
    assert table.soft_timeout(slow) == pytest.approx(0.4, rel=0.05)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=60.0), max_size=40),
    st.floats(min_value=0.001, max_value=0.5),
    st.floats(min_value=0.5, max_value=5.0),
)
def test_soft_timeout_stays_within_bounds(samples: list[float], low: float, high: float) -> None:
    cfg = KadConfig(min_soft_timeout=low, max_soft_timeout=high, request_timeout=high)
    table, members = _full_table(cfg)
    known = members[0].node_id
    for rtt in samples:
        table.record_rtt(known, rtt)
        table.record_rtt(NodeId(7), rtt)  # a stranger: only the global estimate learns
        for node in (known, members[1].node_id, NodeId(99)):
            assert low <= table.soft_timeout(node) <= high


def test_rtt_estimator_follows_rfc6298() -> None:
    est = RttEstimator()
    assert est.timeout(0.0, 10.0) is None
    est.sample(1.0)
    assert est.srtt == pytest.approx(1.0)
    assert est.rttvar == pytest.approx(0.5)
    est.sample(2.0)
    assert est.srtt is not None
    assert est.rttvar == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)
    assert est.srtt == pytest.approx(0.875 * 1.0 + 0.125 * 2.0)
    assert est.timeout(0.0, 100.0) == pytest.approx(est.srtt + 4 * est.rttvar)
    assert est.timeout(0.0, 1.0) == 1.0
    assert est.timeout(50.0, 100.0) == 50.0


def test_rtt_observer_sees_every_sample_and_buckets_list_spares() -> None:
    table, contacts = _full_table()
    seen: list[float] = []
    table.rtt_observer = seen.append
    table.record_rtt(contacts[0].node_id, 0.25)
    table.record_rtt(NodeId(12345), 0.5)  # not in the table: still a round trip measured
    assert seen == [0.25, 0.5]
    spare = _bucket_contacts(SMALL.k + 2)[-2:]
    for contact in spare:
        table.observe(contact, 1.0)
    listed = list(table.buckets())
    assert [(i, len(entries), spares) for i, entries, spares in listed] == [
        (table.bucket_of(contacts[0].node_id), SMALL.k, 2)
    ]
    assert listed[0][1][0].rtt.srtt == 0.25


def test_an_interner_changes_no_answer_and_shares_the_contacts() -> None:
    """The simulator's tables keep the contact its memo interned (one object per peer for
    all nodes): the same random run with and without an interner gives equal tables after
    every step, and the interned table holds only interned objects."""
    from nautilus_kad.core.fields import ContactMemo  # noqa: PLC0415

    rng = random.Random(3)
    config = KadConfig(k=4, replacement_cache_size=2, max_failures=2)
    plain, shared = RoutingTable(OWN, config), RoutingTable(OWN, config)
    memo = ContactMemo(size=64)
    shared.interner = memo.intern
    pool = [_id_in_bucket(OWN, rng.choice((0, 1, 3)), rng) for _ in range(30)]
    for step in range(2000):
        nid = rng.choice(pool)
        if rng.random() < 0.6:
            port = 4000 + rng.randrange(2)  # sometimes a move
            assert plain.observe(_contact(nid, port), float(step)) == shared.observe(
                _contact(nid, port), float(step)
            )
        else:
            assert plain.record_failure(nid) == shared.record_failure(nid)
        assert list(plain) == list(shared)
        target = rng.choice(pool)
        assert plain.closest(target, 5) == shared.closest(target, 5)
    for contact in shared:
        assert contact is memo.intern(Contact(contact.node_id, contact.host, contact.port))


@pytest.mark.parametrize("seed", range(4))
def test_entry_times_in_bucket_arrays_behave_as_float_attributes(seed: int) -> None:
    """Each entry's last-seen time and RTT estimate live in its bucket's array of doubles,
    in a slot reused once the entry leaves. Against a model of last-seen times kept as
    plain floats, through observes, RTT samples, external writes of
    ``last_seen``, failures, spare promotions, departures and removals: every live entry
    reads what the model says, live entries of a bucket never share a slot, and an entry
    that left keeps reading what it read when it left."""
    rng = random.Random(seed)
    config = KadConfig(k=3, replacement_cache_size=2, max_failures=2)
    table = RoutingTable(OWN, config)
    pool = [_id_in_bucket(OWN, rng.choice((0, 1, 5)), rng) for _ in range(24)]
    model: dict[int, float] = {}  # id(entry) -> last seen
    gone: list[tuple[object, tuple[float, float | None, float]]] = []
    live: dict[int, object] = {}
    for step in range(3000):
        nid = rng.choice(pool)
        now = step + rng.random()
        action = rng.random()
        if action < 0.4:
            table.observe(_contact(nid), now)
        elif action < 0.6:
            table.record_rtt(nid, rng.random())
        elif action < 0.7:
            entry = table.get(nid)
            if entry is not None:
                entry.last_seen = now  # as peers.on_request does
        elif action < 0.9:
            table.record_failure(nid)
        elif action < 0.95:
            table.depart(nid)
        else:
            table.remove(nid)
        entries = {id(e): e for e in table.entries()}
        for key, old in list(live.items()):
            if key not in entries:  # it left: frozen from now on
                gone.append((old, (old.last_seen, old.srtt, old.rttvar)))  # type: ignore[attr-defined]
                del live[key]
                model.pop(key, None)
        for key, entry in entries.items():
            if key not in model:  # it entered now: its first reading is the model's
                model[key] = entry.last_seen
                live[key] = entry
            touched = entry.contact.node_id == nid and (action < 0.4 or 0.6 <= action < 0.7)
            if touched and entry.last_seen == now:
                model[key] = now  # this step wrote it
            assert entry.last_seen == model[key]
        for index, bucket in table._buckets.items():
            slots = [e._at for e in bucket.entries.values()]
            assert len(set(slots)) == len(slots), index
            assert all(e._times is bucket.times for e in bucket.entries.values())
        for entry, frozen in gone:
            assert (entry.last_seen, entry.srtt, entry.rttvar) == frozen  # type: ignore[attr-defined]
    assert gone


def test_entry_rtt_arithmetic_is_the_estimators() -> None:
    rng = random.Random(5)
    table = RoutingTable(OWN, SMALL)
    contact = _bucket_contacts(1)[0]
    table.observe(contact, 1.0)
    entry = table.get(contact.node_id)
    assert entry is not None and entry.srtt is None and entry.rttvar == 0.0
    assert entry.timeout(0.1, 5.0) is None
    est = RttEstimator()
    for _ in range(200):
        rtt = rng.expovariate(10)
        table.record_rtt(contact.node_id, rtt)
        est.sample(rtt)
        assert (entry.srtt, entry.rttvar) == (est.srtt, est.rttvar)  # bit for bit
        assert entry.timeout(0.1, 5.0) == est.timeout(0.1, 5.0)
        assert table.soft_timeout(contact.node_id) == est.timeout(
            SMALL.min_soft_timeout, SMALL.max_soft_timeout
        )


@pytest.mark.parametrize("seed", range(4))
def test_join_times_keep_the_semantics_of_the_dict_they_replace(seed: int) -> None:
    """``Peers.since`` was a dict: set when a peer is added, popped when a removal is
    reported, untouched by silent evictions (a stale entry giving way) and spare
    promotions, pruned to the table's peers once larger than the table. The join times
    now live in the entries' slots and a side dict; driven as Peers drives them, they
    answer what the dict answered after every step."""
    from nautilus_kad.core.jointimes import JoinTimes  # noqa: PLC0415

    rng = random.Random(seed)
    config = KadConfig(k=3, replacement_cache_size=2, max_failures=2)
    table = RoutingTable(OWN, config)
    times = JoinTimes(table)
    model: dict[NodeId, float] = {}
    pool = [_id_in_bucket(OWN, rng.choice((0, 1, 4)), rng) for _ in range(20)]
    inf = float("inf")
    for step in range(4000):
        nid = rng.choice(pool)
        now = float(step)
        action = rng.random()
        removed = None
        if action < 0.5:
            added, _ = table.observe(_contact(nid), now)
            if added:  # Peers._added
                times[nid] = now
                model[nid] = now
        elif action < 0.8:
            removed = table.record_failure(nid)
        elif action < 0.9:
            removed = table.depart(nid)
        else:  # Peers.prune
            times.prune()
            if len(model) > len(table):
                model = {n: t for n, t in model.items() if n in table}
        if removed is not None:  # Peers._gone
            assert times.pop(removed.node_id, None) == model.pop(removed.node_id, None)
        for other in pool:
            assert times.get(other, inf) == model.get(other, inf)
            assert (other in times) == (other in model)
        assert len(times) == len(model)
    assert table._left or any(e.joined is None for e in table.entries())  # both paths ran
