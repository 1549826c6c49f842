"""Bootstrap and single-request probes (core/bootstrap.py): ping, joining through seeds,
refreshing idle buckets; the engine driven by hand with explicit ``now``."""

from __future__ import annotations

import pytest
from enginenet import (
    EngineNet,
    Peer,
    addr,
    bootstrapped,
    decode_out,
    known_by,
    lone_engine,
)

from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.events import (
    BootstrapDone,
    NodesAnswered,
    PeerAdded,
    PingDone,
    QueryFailed,
)
from nautilus_kad.core.messages import (
    Contact,
    FindNode,
    MessageType,
    Pong,
)


def test_ping_round_trip_and_both_tables() -> None:
    net = EngineNet(seed=1, now=0.0)
    a, b = net.add(), net.add()
    qid = a.ping(addr(b), net.now)
    # Deliver A's PING by hand: B answers, and pings the stranger before trusting it.
    ((ping_data, dst),) = a.datagrams_to_send()
    assert dst == addr(b)
    b.receive_datagram(ping_data, addr(a), net.now)
    out = decode_out(b)
    kinds = sorted((env.message.TYPE, addr) for env, addr in out)
    assert kinds == [(MessageType.PING, addr(a)), (MessageType.PONG, addr(a))]
    assert a.node_id not in b.table  # not before the stranger proved its address
    for env, _ in out:
        if isinstance(env.message, Pong):
            assert env.message.observed == addr(a)
    # Re-inject what we intercepted and let the network run.
    for env, _ in out:
        data = encode_message(env.message, env.txid, b.auth)
        a.receive_datagram(data, addr(b), net.now)
    net.deliver()
    done = net.result(a, qid)
    assert isinstance(done, PingDone)
    assert done.contact == Contact(b.node_id, *addr(b))
    assert done.rtt == 0.0
    assert b.node_id in a.table
    assert a.node_id in b.table
    assert PeerAdded(Contact(a.node_id, *addr(a))) in net.events[addr(b)]
    assert a.observed_address == addr(a)


def test_ping_rtt_uses_now() -> None:
    net = EngineNet(seed=2, now=0.0)
    a, b = net.add(), net.add()
    qid = a.ping(addr(b), 10.0)
    ((data, _),) = a.datagrams_to_send()
    b.receive_datagram(data, addr(a), 10.1)
    for out, dst in b.datagrams_to_send():
        if dst == addr(a):
            a.receive_datagram(out, addr(b), 10.25)
    event = a.next_event()
    while event is not None and not isinstance(event, PingDone):
        event = a.next_event()
    assert isinstance(event, PingDone)
    assert event.query_id == qid
    assert event.rtt == pytest.approx(0.25)


def test_ping_dead_address_fails_after_request_timeout() -> None:
    net = EngineNet(seed=5, now=0.0)
    a = net.add()
    qid = a.ping(("10.99.0.1", 4000), net.now)
    net.deliver()
    assert a.get_timer() <= net.config.request_timeout
    net.advance_to(net.config.request_timeout - 0.001)
    assert not net.pending_result(a, qid)
    assert a.pending_requests == 1
    net.advance_to(net.config.request_timeout)
    failed = net.result(a, qid)
    assert isinstance(failed, QueryFailed)
    assert "10.99.0.1" in failed.reason
    assert a.pending_requests == 0
    assert a.stats["tx.timeouts"] == 1


def test_bootstrap_fails_without_answers() -> None:
    net = EngineNet(seed=13, now=0.0)
    a = net.add()
    qid = a.bootstrap([], net.now)
    failed = net.result(a, qid)
    assert isinstance(failed, QueryFailed)
    qid = a.bootstrap([("10.99.0.1", 4000), ("10.99.0.2", 4000)], net.now)
    net.advance_to(net.config.request_timeout - 0.001)
    assert not net.pending_result(a, qid)
    net.advance_to(net.config.request_timeout)
    failed = net.result(a, qid)
    assert isinstance(failed, QueryFailed)


def test_bootstrap_survives_a_dead_seed() -> None:
    net = EngineNet(seed=14, now=0.0)
    seed = net.add()
    a = net.add()
    qid = a.bootstrap([("10.99.0.1", 4000), addr(seed)], net.now)
    done = net.result(a, qid)
    assert isinstance(done, BootstrapDone)
    assert done.table_size == 1
    assert seed.node_id in a.table


def test_idle_buckets_are_refreshed() -> None:
    config = KadConfig(refresh_interval=600.0, refresh_check_interval=60.0)
    net = bootstrapped(6, config, seed=15)
    before = {addr(e): e.stats["lookups.started"] for e in list(net.engines.values())}
    net.advance_to(config.refresh_interval - config.refresh_check_interval - 1)
    assert {addr(e): e.stats["lookups.started"] for e in list(net.engines.values())} == before
    net.advance_to(config.refresh_interval + config.refresh_check_interval)
    for e in list(net.engines.values()):
        assert e.stats["lookups.started"] > before[addr(e)]
        assert e.table.buckets_to_refresh(net.now) == []
    assert net.lost == 0


# --- single-request probes ------------------------------------------------------------------


def test_find_node_at_asks_one_address_and_reports_its_answer() -> None:
    """``find_node_at``: one FIND_NODE to one address (no lookup), answered by NodesAnswered."""
    net = EngineNet(seed=15, now=0.0)
    a, b = net.add(), net.add()
    c = net.add()
    known_by_b = b.ping(addr(c), net.now)
    assert isinstance(net.result(b, known_by_b), PingDone)
    qid = a.find_node_at(addr(b), c.node_id, net.now)
    done = net.result(a, qid)
    assert isinstance(done, NodesAnswered)
    assert done.contact == Contact(b.node_id, *addr(b))
    assert Contact(c.node_id, *addr(c)) in done.contacts


def test_probes_fail_at_once_when_the_request_table_is_full() -> None:
    engine = lone_engine(16, KadConfig(max_pending_requests=1))
    first = engine.ping(("192.0.2.70", 5000), 0.0)
    ping = engine.ping(("192.0.2.71", 5000), 0.0)
    find = engine.find_node_at(("192.0.2.72", 5000), engine.node_id, 0.0)
    failed = [e for e in iter(engine.next_event, None) if isinstance(e, QueryFailed)]
    assert [e.query_id for e in failed] == [ping, find]
    assert first not in {e.query_id for e in failed}


def test_the_join_refreshes_only_buckets_its_own_lookup_left_incomplete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The paper's join refreshes every bucket farther than the nearest neighbour; the own-id
    lookup already proved complete every bucket nearer than its k-th closest answer, so only
    the bucket of that answer and the farther ones are refreshed, and the table still holds
    every node of the buckets that were skipped."""
    from nautilus_kad.core.bootstrap import Bootstrap  # noqa: PLC0415
    from nautilus_kad.core.ids import ID_BITS  # noqa: PLC0415
    from nautilus_kad.core.lookups import Lookups  # noqa: PLC0415
    from nautilus_kad.sim.simulation import Simulation, default_sim_config  # noqa: PLC0415

    config = default_sim_config().with_changes(join_refresh=True, k=8)
    sim = Simulation(5, config=config)
    assert all(op.succeeded for op in sim.grow(150))
    joiner = sim.add_node()
    own = int(joiner.node_id)
    targets: list[int] = []
    radius: list[int] = []
    start, last_incomplete = Lookups.start, Bootstrap._last_incomplete

    def spy_start(self: Lookups, target: object, *args: object, **kwargs: object) -> int:
        if self._ctx.node_id == joiner.node_id:  # type: ignore[attr-defined]
            targets.append(int(target))  # type: ignore[call-overload]
        return start(self, target, *args, **kwargs)  # type: ignore[arg-type]

    def spy_last(self: Bootstrap, closest: list) -> int:  # type: ignore[type-arg]
        radius.append(closest[-1].distance if len(closest) >= config.k else -1)
        return last_incomplete(self, closest)

    monkeypatch.setattr(Lookups, "start", spy_start)
    monkeypatch.setattr(Bootstrap, "_last_incomplete", spy_last)
    seeds = [n.address for n in sim.joined.sample(sim.rng, 3)]
    op = sim.join(joiner, seeds)
    sim.run_for(30.0)
    assert op.succeeded
    assert targets[0] == own and len(radius) == 1 and radius[0] > 0
    farthest_incomplete = ID_BITS - radius[0].bit_length()
    buckets = [ID_BITS - (own ^ t).bit_length() for t in targets[1:]]
    assert buckets == list(range(farthest_incomplete + 1))  # the skipped ones: none asked
    nearest_bucket = max(joiner.engine.table.bucket_sizes())
    assert farthest_incomplete + 1 < nearest_bucket  # something was skipped at this size
    others = [n for n in sim.joined if n is not joiner]
    inside = {int(n.node_id) for n in others if (own ^ int(n.node_id)) < radius[0]}
    assert len(inside) >= config.k - 1
    assert inside <= {int(c.node_id) for c in joiner.engine.table}


def test_a_rejoin_with_no_seed_goes_straight_to_the_lookups_when_the_table_has_peers() -> None:
    """No address to contact, but the routing table already knows peers (a restart with
    a saved table, a re-join): the bootstrap skips the seed phase and starts its own-id
    lookup at once through those peers. With an empty table it fails at once."""
    engine = lone_engine(90)
    peer = Peer(91)
    known_by(engine, peer)
    engine.bootstrap([], 1.0)
    sent = decode_out(engine)
    assert [(type(env.message), to) for env, to in sent] == [(FindNode, peer.address)]
    assert isinstance(sent[0][0].message, FindNode)
    assert sent[0][0].message.target == engine.node_id
    assert engine.next_event() is None  # under way, not failed
    empty = lone_engine(92)
    qid = empty.bootstrap([], 1.0)
    assert empty.next_event() == QueryFailed(qid, "no bootstrap address to contact")
