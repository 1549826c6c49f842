"""Replication and repair in the engine (DESIGN §7), with explicit ``now``.

Engines are wired back to back by :mod:`enginenet` (instant delivery, time moves only when
the test says): republish happens and is skipped when fresh, a closer newcomer is handed the
records it should hold, a dead holder is replaced promptly, a clean leave hands records on,
records expire, and the publisher keeps its records alive.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from enginenet import EngineNet, Peer, addr, build, known_by, lone_engine, open_record

from nautilus_kad.core.codec import decode_datagram
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.context import FLAG_LEAVING
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.errors import ValidationError
from nautilus_kad.core.events import GetDone, LeaveDone, PeerRemoved, PutDone, QueryFailed
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import (
    Address,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
)
from nautilus_kad.core.records import (
    Record,
    for_transfer,
    make_immutable,
    make_signed,
    record_expiry,
)
from nautilus_kad.core.replication import among_k_closest

K = 4
CONFIG = KadConfig(k=K, republish_interval=3600.0, repair_delay=30.0)


def _stats(net: EngineNet, prefix: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for engine in net.engines.values():
        total.update({k: v for k, v in engine.stats.items() if k.startswith(prefix)})
    return total


def _put(net: EngineNet, engine: KadEngine, record: Record, *, republish: bool = False) -> PutDone:
    engine.put(record, net.now, republish=republish)
    net.deliver()
    (done,) = net.take(engine, PutDone)
    assert isinstance(done, PutDone)
    return done


def _on_true_closest(net: EngineNet, key: NodeId) -> bool:
    """Whether the k closest live nodes all hold ``key``."""
    holders = {e.node_id for e in net.holders(key)}
    return all(e.node_id in holders for e in net.true_closest(key, K))


@pytest.fixture
def small() -> tuple[EngineNet, list[KadEngine]]:
    return build(16, CONFIG, seed=7)


# --- republish ----------------------------------------------------------------------------


def test_one_holder_republishes_per_interval_and_the_others_skip(
    small: tuple[EngineNet, list[KadEngine]],
) -> None:
    net, engines = small
    key = NodeId.random(net.rng)
    done = _put(net, engines[3], net.record(key, b"v"))
    assert done.acks == K
    net.advance(CONFIG.republish_interval * 0.89)
    assert _stats(net, "republish")["republish.started"] == 0  # not due yet

    net.advance(CONFIG.republish_interval * 0.12)
    stats = _stats(net, "republish")
    # The first holder whose (jittered) timer fired re-stored it on the other k - 1, whose
    # timers then saw a fresh copy and skipped their turn.
    assert stats["republish.started"] == 1
    assert stats["republish.skipped"] == K - 1
    assert _stats(net, "store.refreshed")["store.refreshed"] == K - 1

    net.advance(CONFIG.republish_interval)  # and so on, once per interval
    assert _stats(net, "republish")["republish.started"] == 2


def test_a_record_received_within_the_interval_is_not_republished() -> None:
    net, engines = build(8, CONFIG, seed=3)
    key = NodeId.random(net.rng)
    _put(net, engines[1], net.record(key, b"v"))
    holder = net.holders(key)[0]
    # Someone re-stores it every 40 minutes: the holder's own timer keeps being pushed back.
    for _ in range(4):
        net.advance(2400)
        record = holder.store.get(key, net.now)
        assert record is not None
        holder_stats_before = holder.stats["republish.started"]
        other = next(e for e in net.holders(key) if e is not holder)
        other.put(record.record, net.now)  # a plain re-put reaches every holder
        net.deliver()
        assert holder.stats["republish.started"] == holder_stats_before
    assert holder.stats["republish.started"] == 0


def test_republish_restores_k_live_replicas_after_holders_die(
    small: tuple[EngineNet, list[KadEngine]],
) -> None:
    net, engines = small
    rng = random.Random(5)
    keys = [NodeId.random(rng) for _ in range(12)]
    for i, key in enumerate(keys):
        _put(net, engines[i % len(engines)], net.record(key, b"value %d" % i))
    victims = {e.node_id for e in net.holders(keys[0])[: K - 1]}
    for engine in engines:
        if engine.node_id in victims:
            net.kill(engine)
    survivors = [key for key in keys if net.holders(key)]
    assert len(survivors) == len(keys)
    assert min(len(net.holders(key)) for key in keys) < K
    net.advance(CONFIG.republish_interval * 1.01)
    # Right after deaths, NODES answers still list the dead (nobody noticed yet), so with a
    # k this small a lookup need not find the exact k closest; but every record is back on
    # at least k live nodes.
    assert min(len(net.holders(key)) for key in keys) >= K


def test_a_holder_outside_the_k_closest_drops_its_copy_after_handing_it_over() -> None:
    net, engines = build(12, CONFIG, seed=11)
    key = NodeId.random(net.rng)
    _put(net, engines[0], net.record(key, b"v"))
    holders = {e.node_id for e in net.holders(key)}
    # Four newcomers right next to the key push every old holder out of the k closest.
    for _ in range(K):
        net.join(net.add(node_id_near=key), engines[0])
    net.advance(5)
    closest = net.true_closest(key, K)
    assert not holders & {e.node_id for e in closest}
    assert all(e.store.get(key, net.now) is not None for e in closest)  # handed over
    net.advance(CONFIG.republish_interval * 1.05)
    # The old holders republished to the new k closest and, all k having stored it, let go.
    assert {e.node_id for e in net.holders(key)} == {e.node_id for e in closest}
    assert _stats(net, "republish")["republish.handed_over"] >= 1


# --- handoff ------------------------------------------------------------------------------


def test_a_closer_newcomer_is_handed_the_record_by_a_few_holders(
    small: tuple[EngineNet, list[KadEngine]],
) -> None:
    net, engines = small
    key = NodeId.random(net.rng)
    _put(net, engines[2], net.record(key, b"hand me over"))
    net.advance(60)
    newcomer = net.add(node_id_near=key)
    assert newcomer.node_id in {e.node_id for e in net.true_closest(key, K)}
    net.join(newcomer, engines[0])
    net.advance(2)
    stored = newcomer.store.get(key, net.now)
    assert stored is not None and stored.record.value == b"hand me over"
    # Not every holder sends it: at most handoff_redundancy of them did.
    assert newcomer.stats["store.accepted"] + newcomer.stats["store.refreshed"] <= (
        CONFIG.handoff_redundancy
    )
    assert _on_true_closest(net, key)


def test_a_far_newcomer_gets_nothing(small: tuple[EngineNet, list[KadEngine]]) -> None:
    net, engines = small
    rng = random.Random(2)
    keys = [NodeId.random(rng) for _ in range(10)]
    for key in keys:
        _put(net, engines[0], net.record(key, b"v"))
    net.advance(60)
    far = net.add()
    net.join(far, engines[0])
    net.advance(2)
    # It is handed nothing it is not among the k closest for. (It can miss one it should
    # hold when the closer holders' buckets are full and they never learn of it: the next
    # republish covers that.)
    for key in keys:
        should = far.node_id in {e.node_id for e in net.true_closest(key, K)}
        has = far.store.get(key, net.now) is not None
        assert should or not has, key


# --- repair -------------------------------------------------------------------------------


def test_a_dead_holder_is_replaced_within_the_repair_delay() -> None:
    config = CONFIG.with_changes(max_failures=1, republish_interval=10 * 3600.0)
    net, engines = build(16, config, seed=21)
    key = NodeId.random(net.rng)
    _put(net, engines[5], net.record(key, b"repair me"))
    net.advance(60)
    holders = net.holders(key)
    dead = holders[0]
    net.kill(dead)
    assert not _on_true_closest(net, key)
    # A survivor finds the holder dead (its request times out and the entry is evicted) ...
    survivor = holders[1]
    survivor.find_node(key, net.now)
    net.deliver()
    net.advance(config.request_timeout + 0.1)
    removed = [e.contact.node_id for e in net.take(survivor, PeerRemoved)]  # type: ignore[attr-defined]
    assert dead.node_id in removed
    assert survivor.stats["repair.scheduled"] >= 1
    # ... and puts the record back on k live nodes after a short delay (the holders take
    # turns by rank, one repair_delay apart), not after an hour: a top-up from its routing
    # table, STORE on the nodes that moved up into the dead one's place.
    net.advance((K + 1) * config.repair_delay + 5)
    assert len(net.holders(key)) >= K
    assert _stats(net, "repair")["repair.topups"] >= 1
    assert _stats(net, "republish")["republish.started"] == 0
    # (Exactly the true k closest is the hourly republish's job: it looks the key up.)


def test_a_repair_seen_by_several_holders_costs_a_few_stores() -> None:
    config = CONFIG.with_changes(max_failures=1, republish_interval=10 * 3600.0)
    net, engines = build(16, config, seed=22)
    key = NodeId.random(net.rng)
    _put(net, engines[5], net.record(key, b"v"))
    net.advance(60)
    holders = net.holders(key)
    net.kill(holders[0])
    for survivor in holders[1:]:
        survivor.find_node(key, net.now)
    net.deliver()
    net.advance(config.request_timeout + 0.1)
    scheduled = _stats(net, "repair")["repair.scheduled"]
    assert scheduled >= 2
    net.advance((K + 1) * config.repair_delay + 5)
    assert len(net.holders(key)) >= K
    repair = _stats(net, "repair")
    # Each holder that saw the death topped the record up from its table (a STORE to each
    # node behind the dead one at most), instead of a lookup and k STOREs per holder.
    assert repair["repair.topups"] + repair["repair.skipped"] <= scheduled
    assert repair["repair.stores"] <= (K - 1) * scheduled
    assert _stats(net, "republish")["republish.started"] == 0


# --- clean leave --------------------------------------------------------------------------


def test_a_clean_leave_hands_every_record_on() -> None:
    net, engines = build(16, CONFIG, seed=31)
    rng = random.Random(4)
    keys = [NodeId.random(rng) for _ in range(20)]
    for key in keys:
        _put(net, engines[0], net.record(key, b"v"))
    net.advance(60)
    leaver = max(engines[1:], key=lambda e: len(e.store))
    held = [key for key in keys if leaver.store.get(key, net.now) is not None]
    assert held
    qid = leaver.leave(net.now)
    net.deliver()
    (done,) = net.take(leaver, LeaveDone)
    assert isinstance(done, LeaveDone) and done.query_id == qid
    assert done.records == len(held)
    assert done.acks == done.stores_sent > 0
    net.kill(leaver)
    # No time passes: the records are already where they belong.
    assert all(_on_true_closest(net, key) for key in keys)


def test_leave_with_nothing_to_hand_on_finishes_at_once() -> None:
    net, engines = build(4, CONFIG, seed=2)
    qid = engines[1].leave(net.now)
    assert engines[1].next_event() == LeaveDone(qid, 0, 0, 0)


# --- expiry and the publisher -------------------------------------------------------------


def test_expired_records_are_removed_everywhere(small: tuple[EngineNet, list[KadEngine]]) -> None:
    net, engines = small
    key = NodeId.random(net.rng)
    _put(net, engines[0], net.record(key, b"short", ttl=300))
    assert len(net.holders(key)) == K
    net.advance(300 + CONFIG.expire_interval + 1)
    assert net.holders(key) == []
    assert all(len(e.store) == 0 for e in engines)
    assert _stats(net, "store.expired")["store.expired"] == K
    # Nothing is left to republish.
    net.advance(CONFIG.republish_interval * 1.1)
    assert _stats(net, "republish")["republish.started"] == 0


def test_holder_republish_does_not_extend_a_records_life() -> None:
    config = CONFIG.with_changes(republish_interval=600.0)
    net, engines = build(10, config, seed=8)
    key = NodeId.random(net.rng)
    _put(net, engines[0], net.record(key, b"v", ttl=2000))
    net.advance(1900)
    assert _stats(net, "republish")["republish.started"] >= 2
    assert len(net.holders(key)) == K
    net.advance(200)
    assert net.holders(key) == []


def _unstamped(kind: str, ttl: int, rng: random.Random) -> Record:
    """A record without a publication time on the wire: its TTL counts from arrival."""
    if kind == "immutable":
        return make_immutable(b"content %d" % rng.getrandbits(32), ttl)
    return make_signed(Identity.generate(rng), b"salt", b"profile", 1, ttl)


@pytest.mark.parametrize("kind", ["immutable", "signed"])
def test_an_unstamped_record_expires_at_its_publishers_ttl_wherever_it_moved(kind: str) -> None:
    # Holders republish it, and newcomers closer to the key are handed it: every copy must
    # still die when the publisher's TTL runs out, not a full TTL after its own arrival.
    config = CONFIG.with_changes(republish_interval=600.0)
    net, engines = build(10, config, seed=18)
    record = _unstamped(kind, 2000, net.rng)
    _put(net, engines[0], record)
    net.advance(1000)
    for _ in range(3):  # closer nodes arrive: the holders hand the record on to them
        net.join(net.add(node_id_near=record.key, near_bits=12), engines[1])
        net.advance(150)
    assert _stats(net, "handoff")["handoff.records"] >= 1
    assert _stats(net, "republish")["republish.started"] >= 1
    assert len(net.holders(record.key)) >= K
    net.advance(2000 - 1450 + config.expire_interval + 1)
    assert net.holders(record.key) == []


def test_a_holder_passes_on_the_time_left_never_more() -> None:
    record = make_immutable(b"x", 1000)
    assert for_transfer(record, 1700.9, 1000.0).ttl == 700  # rounded down
    assert for_transfer(record, 5000.0, 1000.0) is record  # never above the original
    assert for_transfer(record, 1000.2, 1000.0).ttl == 1
    stamped = Record(NodeId(1), b"v", 50_000, 1000)  # counts from publication already
    assert for_transfer(stamped, 60.0, 55.0) is stamped


@pytest.mark.parametrize("kind", ["open", "immutable", "signed"])
def test_the_publisher_keeps_its_record_alive_past_the_ttl(kind: str) -> None:
    config = CONFIG.with_changes(publisher_republish_interval=800.0)
    net, engines = build(10, config, seed=9)
    key = NodeId.random(net.rng)
    publisher = engines[4]
    record = net.record(key, b"mine", ttl=1000)
    if kind != "open":
        record = _unstamped(kind, 1000, net.rng)
        key = record.key
    _put(net, publisher, record, republish=True)
    for _ in range(25):  # two and a half original lifetimes, never without its k copies
        net.advance(100)
        assert len(net.holders(key)) >= K
    assert publisher.stats["publish.republished"] >= 3
    reader = next(e for e in engines if e.store.get(key, net.now) is None)
    reader.get(key, net.now)
    net.deliver()
    (got,) = net.take(reader, GetDone)
    assert isinstance(got, GetDone) and got.record is not None
    assert got.record.value == record.value
    # Unpublished, it dies with its current TTL.
    assert publisher.unpublish(key)
    net.advance(2000)
    assert net.holders(key) == []


def test_a_newer_write_ends_the_publishers_republishing() -> None:
    config = CONFIG.with_changes(publisher_republish_interval=800.0)
    net, engines = build(10, config, seed=10)
    key = NodeId.random(net.rng)
    publisher = engines[4]
    _put(net, publisher, net.record(key, b"old", ttl=1000), republish=True)
    net.advance(10)
    _put(net, engines[7], net.record(key, b"new", ttl=5000))
    net.advance(900)
    assert publisher.stats["publish.superseded"] == 1
    assert publisher.published() == []
    assert all(e.store.get(key, net.now).record.value == b"new" for e in net.holders(key))  # type: ignore[union-attr]


def test_the_same_publication_with_a_longer_ttl_supersedes() -> None:
    a = Record(NodeId(1), b"v", 1000, 60)
    b = Record(NodeId(1), b"v", 1000, 120)
    assert b.supersedes(a) and not a.supersedes(b)
    assert not a.supersedes(a)
    newer = Record(NodeId(1), b"a", 2000, 1)
    assert newer.supersedes(b)


def test_expiry_counts_from_publication_and_is_capped() -> None:
    config = KadConfig(max_record_ttl=100.0)
    record = Record(NodeId(1), b"v", 50_000, 1000)  # published at t = 50 s
    assert record_expiry(record, 60.0, config) == 160.0  # capped at now + 100
    assert record_expiry(record, 1000.0, config) == 1050.0


def test_far_future_and_expired_records_are_refused(
    small: tuple[EngineNet, list[KadEngine]],
) -> None:
    net, engines = small
    key = NodeId.random(net.rng)
    future = Record(key, b"v", int((net.now + 2 * CONFIG.max_clock_skew) * 1000), 600)
    done = _put(net, engines[0], future)
    assert done.acks == 0
    assert done.errors and all("future" in text for _, text in done.errors)
    assert all(code is ErrorCode.INVALID_RECORD for code, _ in done.errors)
    with pytest.raises(ValidationError, match="expired"):
        engines[0].put(Record(key, b"v", int((net.now - 700) * 1000), 600), net.now)


# --- a lookup refused by the request limit ------------------------------------------------


def test_a_lookup_over_the_request_limit_fails_instead_of_hanging() -> None:
    """With k > alpha, a lookup whose requests are refused by ``max_pending_requests`` still
    has untried candidates but nothing in flight: it must end (as a failure to retry), not
    wait for ever."""
    net, engines = build(30, KadConfig(), seed=12)
    busy = net.add(config=KadConfig(max_pending_requests=1))
    net.join(busy, engines[0])
    net.advance(5)
    qids = [busy.get(NodeId.random(net.rng), net.now) for _ in range(3)]
    net.deliver()
    net.advance(KadConfig().request_timeout + 1)
    ended = {e.query_id for e in net.take(busy, GetDone) + net.take(busy, QueryFailed)}  # type: ignore[attr-defined]
    assert set(qids) <= ended


def test_one_rule_for_among_the_k_closest() -> None:
    assert among_k_closest(own_distance=50, known=2, farthest=10, k=3)  # fewer than k known
    assert among_k_closest(own_distance=5, known=3, farthest=10, k=3)  # closer than the k-th
    assert not among_k_closest(own_distance=10, known=3, farthest=10, k=3)  # a tie is not
    assert not among_k_closest(own_distance=50, known=8, farthest=10, k=3)
    # Every caller asks this one function (put, republish, its skip, the repair top-up).
    root = Path(__file__).resolve().parents[1] / "src" / "nautilus_kad" / "core"
    callers = {p.name for p in root.glob("*.py") if "among_k_closest(" in p.read_text()}
    assert callers == {"replication.py", "put.py", "replicator.py"}


def test_a_record_gone_by_its_republish_time_is_forgotten_not_republished() -> None:
    """The republish timer outlived the record (its TTL ran out between two store
    expiry ticks): nothing is republished, and the record is no longer held."""
    engine = lone_engine(80, KadConfig(expire_interval=1e9))  # no expiry tick comes first
    known_by(engine, Peer(81))
    record = Record(NodeId(5), b"v", 1_000, 120)  # published at 1 s, gone at 121 s
    assert engine.holdings.accept(record, None, 0.0, validate=True) == (None, "")
    due = engine.replicator.schedule.next_deadline()
    assert due > 121.0 and record.key in engine.holdings.held
    engine.handle_timer(due)
    assert record.key not in engine.holdings.held
    assert engine.stats["republish.started"] == 0
    assert engine.replicator.schedule.next_deadline() > due


@pytest.mark.parametrize("leaves", [False, True])
def test_a_handoff_scan_for_a_newcomer_gone_before_its_turn_sends_nothing(leaves: bool) -> None:
    """A peer entering the table starts a handoff scan of the records it should hold (first a
    token request, then the STORE). If it leaves the table before the scan's turn, the scan
    is dropped when its turn comes: nothing is sent to it."""
    engine = lone_engine(81, KadConfig(sessions=False))
    record = open_record(b"handed over", b"v")
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    peer = Peer(82)
    known_by(engine, peer)
    assert len(engine.scans) == 1
    if leaves:
        peer.request(engine, Ping(), 0.0, flags=FLAG_LEAVING)
        assert peer.identity.node_id not in engine.table
    engine.handle_timer(0.01)
    sent = [decode_datagram(d, peer.auth).message for d, _ in engine.datagrams_to_send()]
    assert [type(m) for m in sent] == ([] if leaves else [FindNode])
    assert len(engine.scans) == 0


def test_a_leave_counts_a_record_gone_meanwhile_as_handed_on_unsent() -> None:
    """Leaving hands records on one lookup at a time here. A record dropped while its own
    lookup runs gets no STORE when the lookup ends; one dropped while waiting for its turn
    starts no lookup. Both still count as done: the leave ends, with no STORE sent."""
    engine = lone_engine(91, KadConfig(sessions=False, max_concurrent_republish=1))
    records = [open_record(b"gone during its lookup", b"v"), open_record(b"gone before", b"v")]
    for record in records:
        assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    peer = Peer(92)
    known_by(engine, peer)
    engine.datagrams_to_send()  # the handoff scan's token request: not answered here
    qid = engine.leave(0.0)
    assert engine.stats["leave.lookups"] == 1
    for record in records:
        engine.holdings.remove(record.key)
    token = b"t" * 8
    assert peer.answer(engine, lambda env: Nodes(addr(engine), token, ()), 0.01) >= 1
    done = [e for e in iter(engine.next_event, None) if isinstance(e, LeaveDone)]
    assert done == [LeaveDone(qid, 2, 0, 0)]
    assert engine.stats["leave.lookups"] == 1  # none for the record gone before its turn
    sent = [decode_datagram(d, peer.auth).message for d, _ in engine.datagrams_to_send()]
    assert not [m for m in sent if isinstance(m, Store)]


def test_a_republish_of_a_record_gone_during_its_lookup_stores_nothing() -> None:
    """The regular republish of a record starts a lookup; the record is dropped before the
    lookup ends: no STORE goes out, and nothing is left waiting."""
    engine = lone_engine(93, KadConfig(sessions=False))
    record = open_record(b"gone during its republish", b"v", ttl=86_400)
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    peer = Peer(94)
    known_by(engine, peer)
    engine.datagrams_to_send()  # the handoff scan's token request: not answered here
    state = engine.replicator.schedule.get(record.key)
    assert state is not None
    engine.handle_timer(state.due)
    assert engine.stats["republish.started"] == 1
    engine.holdings.remove(record.key)
    token = b"t" * 8
    assert peer.answer(engine, lambda env: Nodes(addr(engine), token, ()), state.due) >= 1
    sent = [decode_datagram(d, peer.auth).message for d, _ in engine.datagrams_to_send()]
    assert not [m for m in sent if isinstance(m, Store)]
    assert engine.replication_backlog == 0


def test_a_republish_that_finds_no_node_keeps_the_record_for_the_next_interval() -> None:
    """A node alone in the network republishes its record: the lookup finds nobody to store
    on, so the republish ends at once with no STORE and no shortfall (fewer than k nodes are
    known: nobody is missing), the record is kept and its next republish is a regular one."""
    config = KadConfig(sessions=False, republish_jitter=0.0)
    engine = lone_engine(95, config)
    record = open_record(b"alone", b"v", ttl=86_400)
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    state = engine.replicator.schedule.get(record.key)
    assert state is not None
    due = state.due
    engine.handle_timer(due)
    assert engine.stats["republish.started"] == 1
    assert engine.stats["republish.short"] == 0
    assert engine.datagrams_to_send() == []
    assert record.key in engine.holdings.held
    again = engine.replicator.schedule.get(record.key)
    assert again is not None and again.due == due + config.republish_interval
    assert again.shortfalls == 0


def test_a_short_republish_of_a_record_dropped_meanwhile_schedules_no_repair() -> None:
    """A republish whose STORE is refused falls short of k and schedules a repair; if the
    record was dropped while the STORE was out, its end schedules nothing (the record has
    no timer any more)."""
    config = KadConfig(sessions=False, k=2)
    for dropped in (False, True):
        engine = lone_engine(97, config)
        record = open_record(b"short", b"v", ttl=86_400)
        assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
        peer = Peer(98)
        known_by(engine, peer)
        engine.datagrams_to_send()  # the handoff scan's token request: not answered here
        state = engine.replicator.schedule.get(record.key)
        assert state is not None
        now = state.due
        observed = addr(engine)

        def reply(env: Envelope, observed: Address = observed) -> Message | None:
            if isinstance(env.message, Store):
                return Error(observed, ErrorCode.STORE_FULL, "refused")
            if isinstance(env.message, Ping):
                return Pong(observed)
            return Nodes(observed, b"t" * 8, ())

        engine.handle_timer(now)
        assert peer.answer(engine, reply, now) >= 1  # the lookup (and upkeep PINGs)
        if dropped:
            engine.holdings.remove(record.key)
        assert peer.answer(engine, reply, now) >= 1  # the STORE (and whatever else)
        assert engine.stats["republish.short"] == (0 if dropped else 1)
        assert (engine.replicator.schedule.get(record.key) is None) is dropped


@pytest.mark.parametrize("expired", [False, True])
def test_a_handoff_skips_a_record_that_expired_since_the_last_expiry_tick(expired: bool) -> None:
    """Expired records leave the index at the periodic expiry tick; a handoff scan running
    between two ticks finds such a record still indexed but gone from the store: it is not
    handed over (no token request, no STORE) and the scan ends."""
    engine = lone_engine(99, KadConfig(sessions=False))
    record = open_record(b"short-lived", b"v", ttl=1)
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    peer = Peer(100)
    known_by(engine, peer)
    when = 2.0 if expired else 0.5
    assert when < engine.config.expire_interval
    engine.handle_timer(when)
    assert engine.stats["store.expired"] == 0  # the tick has not run
    assert record.key in engine.holdings.held  # still indexed
    sent = [decode_datagram(d, peer.auth).message for d, _ in engine.datagrams_to_send()]
    assert [type(m) for m in sent] == ([] if expired else [FindNode])
    assert len(engine.scans) == 0
