"""Every finished lookup, get and put reports how many of its requests timed out.

A query's ``timeouts`` are its requests that passed their soft timeout and had not answered
when it ended: the dead or overloaded peers it waited on (the daemon shows them per lookup).
Driven by hand on the in-memory engine network (tests/enginenet.py): explicit time, no sockets.
"""

from __future__ import annotations

from enginenet import EngineNet, Peer, addr, bootstrapped, known_by, lone_engine, open_record

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import GetDone, LookupDone, PutDone
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import Address, Nodes


def _asked(net: EngineNet, engine: KadEngine, since: int, down: set[Address]) -> set[Address]:
    """The down addresses ``engine`` sent a datagram to after ``net.sent[since]``."""
    return {dst for _, src, dst in net.sent[since:] if src == addr(engine) and dst in down}


def _kill_closest(net: EngineNet, target: NodeId, count: int, spare: KadEngine) -> set[Address]:
    """Take down the ``count`` nodes closest to ``target`` (never ``spare``)."""
    victims = sorted(
        (e for e in list(net.engines.values()) if e is not spare), key=lambda e: e.node_id ^ target
    )[:count]
    down = {addr(e) for e in victims}
    net.down |= down
    return down


def test_a_lookup_reports_the_dead_peers_it_waited_on() -> None:
    net = bootstrapped(30, seed=41)
    target = NodeId(0x5A5A << 240)
    asker = max(
        list(net.engines.values()), key=lambda e: e.node_id ^ target
    )  # the farthest: many hops
    down = _kill_closest(net, target, 3, asker)
    since = len(net.sent)
    qid = asker.find_node(target, net.now)
    net.advance_to(net.now + 2 * net.config.request_timeout)
    done = net.result(asker, qid)
    assert isinstance(done, LookupDone)
    asked = _asked(net, asker, since, down)
    assert asked  # the dead were among the closest it knew, so it tried them
    assert done.timeouts == len(asked)
    assert not {c.address for c in done.contacts} & down


def test_a_lookup_on_a_live_network_reports_no_timeouts() -> None:
    net = bootstrapped(30, seed=42)
    asker = list(net.engines.values())[7]
    qid = asker.find_node(NodeId(0x1234 << 200), net.now)
    net.advance_to(net.now + 2 * net.config.request_timeout)
    done = net.result(asker, qid)
    assert isinstance(done, LookupDone)
    assert done.queries > 0
    assert done.timeouts == 0


def test_a_get_and_a_put_report_their_timeouts() -> None:
    net = bootstrapped(30, seed=43)
    record = open_record(b"timeouts-of-a-put", b"v", ts=5_000)
    target = record.key
    engines = sorted(list(net.engines.values()), key=lambda e: e.node_id ^ target)
    putter = engines[-1]
    down = _kill_closest(net, target, 2, putter)
    since = len(net.sent)
    qid = putter.put(record, net.now)
    net.advance_to(net.now + 2 * net.config.request_timeout)
    put = net.result(putter, qid)
    assert isinstance(put, PutDone)
    asked = _asked(net, putter, since, down)
    assert asked
    assert put.timeouts == len(asked)
    assert put.acks == net.config.k  # the k closest live nodes: the dead are not counted

    getter = engines[-2]
    since = len(net.sent)
    qid = getter.get(record.key, net.now)
    net.advance_to(net.now + 2 * net.config.request_timeout)
    got = net.result(getter, qid)
    assert isinstance(got, GetDone)
    assert got.record == record
    # It asked the dead too, but a live holder's value ended it before their soft
    # timeouts: nothing was waited on in vain.
    assert _asked(net, getter, since, down)
    assert got.timeouts == 0


def test_an_answer_after_the_soft_timeout_takes_the_timeout_back() -> None:
    """A slow peer that answers before the query ends did not time out; one that stays
    silent did (sessions off, so the test can read the requests)."""
    net = EngineNet(config=KadConfig(sessions=False), seed=44, now=0.0)
    a, slow, silent = net.add(), net.add(), net.add()
    for peer in (slow, silent):
        net.result(a, a.ping(addr(peer), net.now))
    qid = a.find_node(NodeId(99), net.now)
    requests = {dst: data for data, dst in a.datagrams_to_send()}
    assert set(requests) == {addr(slow), addr(silent)}
    soft = max(a.table.soft_timeout(p.node_id) for p in (slow, silent))
    start = net.now
    a.handle_timer(start + soft + 0.01)  # both pass their soft timeout (and are re-sent)
    resent = {dst for _, dst in a.datagrams_to_send()}
    assert resent == {addr(slow), addr(silent)}
    slow.receive_datagram(requests[addr(slow)], addr(a), start + soft + 0.02)
    for data, _ in slow.datagrams_to_send():
        a.receive_datagram(data, addr(slow), start + soft + 0.03)
    a.handle_timer(start + soft + net.config.slow_grace + 0.05)  # the silent one's grace ends
    net.deliver()
    done = net.result(a, qid)
    assert isinstance(done, LookupDone)
    assert [c.node_id for c in done.contacts] == [slow.node_id]
    assert done.timeouts == 1


def test_without_grace_a_lookup_gives_up_on_a_slow_peer_at_its_soft_timeout() -> None:
    """With ``slow_grace = 0`` a lookup does not wait past a peer's soft timeout: the
    request is re-sent once (for a late answer, if it comes) and the peer given up. One
    peer answers, the other is silent: the lookup ends at the silent one's soft timeout,
    with the one that answered (with grace it would still be waiting)."""
    engine = lone_engine(51, KadConfig(sessions=False, slow_grace=0.0))
    silent, answering = Peer(52, ("192.0.2.52", 5000)), Peer(53, ("192.0.2.53", 5000))
    known_by(engine, silent)
    known_by(engine, answering)
    qid = engine.find_node(NodeId(77), 0.0)
    reply = lambda env: Nodes(addr(engine), b"t" * 8, ())  # noqa: E731
    assert answering.answer(engine, reply, 0.01) == 1
    assert engine.next_event() is None  # still waiting for the silent one
    soft = engine.get_timer()
    assert soft < engine.config.request_timeout
    engine.handle_timer(soft)
    done = [e for e in iter(engine.next_event, None) if isinstance(e, LookupDone)]
    assert [d.query_id for d in done] == [qid]
    assert [c.node_id for c in done[0].contacts] == [answering.identity.node_id]
    assert done[0].timeouts == 1
    resent = [d for d, dst in engine.datagrams_to_send() if dst == silent.address]
    assert len(resent) == 1  # the one re-sent copy
