"""The one STORE fan-out (core/fanout.py): every STORE a node sends has one owner and one set
of rules, whatever it is for (put, store_at, get write-back, caching, republish, handoff,
repair, leave)."""

from __future__ import annotations

import random

import pytest
from enginenet import EngineNet, Peer, addr, known_by, lone_engine, open_record

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.context import FLAG_LEAVING
from nautilus_kad.core.engine import TOKEN_BYTES, KadEngine
from nautilus_kad.core.events import GetDone, PutDone
from nautilus_kad.core.fanout import FANOUT_QID, StoreBatch, StoreItem
from nautilus_kad.core.gets import _RECENT_SIGNED
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import key_id
from nautilus_kad.core.messages import (
    Address,
    Contact,
    Envelope,
    FindNode,
    Nodes,
    Store,
    Stored,
    Value,
)
from nautilus_kad.core.records import Record, RecordKind, make_signed

SIGNED_ONLY = KadConfig(sessions=False)
"""Every datagram signed, so the test can read each one."""
_READER = Authenticator(Identity.generate(random.Random(7)))


def _is_store(data: bytes) -> bool:
    return isinstance(decode_datagram(data, _READER).message, Store)


def _net(size: int, seed: int) -> EngineNet:
    net = EngineNet(size, config=SIGNED_ONLY, seed=seed)
    net.join_all()
    return net


def test_a_cache_store_lost_once_is_sent_again() -> None:
    """Caching a found value used to be fire-and-forget: one lost datagram and the closest
    node that lacked the value never got it. Now it is a STORE like any other: re-sent once
    when it is slow, and its answer read."""
    net = _net(30, seed=61)
    engines = list(net.engines.values())
    record = Record(key_id(b"cache-after-loss"), b"v", int(net.now * 1000), 3600)
    ranked = sorted(engines, key=lambda e: e.node_id ^ record.key)
    holder, reader, nearest = ranked[14], ranked[-1], ranked[0]
    assert holder.holdings.accept(record, None, net.now, validate=False)[0] is None
    dropped: list[Address] = []

    def lose_first_store(data: bytes, source: Address, destination: Address) -> bytes | None:
        if source == net.address_of(reader) and not dropped and _is_store(data):
            dropped.append(destination)
            return None
        return data

    net.filter = lose_first_store
    got = net.wait_for(reader, reader.get(record.key, net.now))
    assert isinstance(got, GetDone) and got.record == record
    assert dropped == [net.address_of(nearest)]
    assert nearest.store.get(record.key, net.now) is None  # the first copy was lost
    net.advance(5.0)
    cached = nearest.store.get(record.key, net.now)
    assert cached is not None and cached.record == record
    assert reader.stats["fanout.slow"] == 1


def test_every_store_is_owned_by_the_fanout() -> None:
    """Puts, store_at, caching and leave: every STORE request in flight belongs to the one
    owner (none is sent with no owner, none under a query of its own)."""
    net = _net(24, seed=62)
    engines = list(net.engines.values())
    owners: list[int | None] = []

    def watch(data: bytes, source: Address, destination: Address) -> bytes | None:
        engine = net.engines[source]
        for pending in engine.requests.pending.values():
            if isinstance(pending.request, Store) and pending.address == destination:
                owners.append(pending.query_id)
        return data

    net.filter = watch
    writer: KadEngine = engines[3]
    record = Record(key_id(b"owned"), b"v", int(net.now * 1000), 3600)
    done = net.wait_for(writer, writer.put(record, net.now))
    assert isinstance(done, PutDone) and done.acks >= 10
    far = Record(key_id(b"owned-elsewhere"), b"w", int(net.now * 1000), 3600)
    ranked = sorted(engines, key=lambda e: e.node_id ^ far.key)
    target = ranked[-1]
    contact = Contact(target.node_id, *net.address_of(target))
    done = net.wait_for(writer, writer.store_at(far, [contact], net.now))
    assert isinstance(done, PutDone) and contact in done.stored_on
    reader = ranked[0]
    got = net.wait_for(reader, reader.get(far.key, net.now))
    assert isinstance(got, GetDone) and got.record == far  # and cached on the way
    leaver = ranked[-1]
    leaver.leave(net.now)
    net.advance(10.0)
    assert len(owners) >= 12
    assert set(owners) == {FANOUT_QID}
    assert all(e.replication_backlog == 0 for e in engines)


# --- the fan-out's own rules, one engine and hand-driven peers -------------------------------

_TOKEN = b"t" * TOKEN_BYTES


def _alone(config: KadConfig | None = None) -> tuple[KadEngine, Peer]:
    engine = lone_engine(71, config or KadConfig(sessions=False))
    peer = Peer(72)
    known_by(engine, peer)
    return engine, peer


def _stores_to(engine: KadEngine, peer: Peer) -> list[Envelope]:
    out = [
        decode_datagram(d, peer.auth)
        for d, dst in engine.datagrams_to_send()
        if dst == peer.address
    ]
    return [env for env in out if isinstance(env.message, Store)]


def _batch(engine: KadEngine, *, background: bool) -> tuple[StoreBatch, list[float]]:
    done: list[float] = []
    batch = StoreBatch("test", background=background, on_done=lambda b, now: done.append(now))
    return batch, done


def test_a_storer_that_is_leaving_does_not_count_as_a_copy() -> None:
    engine, peer = _alone()
    record = open_record(b"leaving", b"v")
    engine.tokens.remember(peer.identity.node_id, _TOKEN, 0.0)
    qid = engine.store_at(record, [Contact(peer.identity.node_id, *peer.address)], 0.0)
    (env,) = _stores_to(engine, peer)
    answer = encode_message(Stored(addr(engine)), env.txid, peer.auth, FLAG_LEAVING)
    engine.receive_datagram(answer, peer.address, 0.01)
    done = [e for e in iter(engine.next_event, None) if isinstance(e, PutDone)]
    assert [d.query_id for d in done] == [qid]
    assert Contact(peer.identity.node_id, *peer.address) not in done[0].stored_on
    assert engine.stats["fanout.departing"] == 1


def test_without_grace_a_slow_foreground_store_ends_at_its_soft_timeout() -> None:
    engine, peer = _alone(KadConfig(sessions=False, slow_grace=0.0))
    record = open_record(b"no grace", b"v")
    engine.tokens.remember(peer.identity.node_id, _TOKEN, 0.0)
    qid = engine.store_at(record, [Contact(peer.identity.node_id, *peer.address)], 0.0)
    assert len(_stores_to(engine, peer)) == 1
    soft = engine.get_timer()
    assert soft < engine.config.request_timeout
    engine.handle_timer(soft)
    done = [e for e in iter(engine.next_event, None) if isinstance(e, PutDone)]
    assert [d.query_id for d in done] == [qid]
    assert engine.stats["fanout.slow"] == 1
    # Its answer arriving after the put ended changes nothing.
    (store,) = _stores_to(engine, peer)  # the one re-sent copy
    engine.receive_datagram(
        encode_message(Stored(addr(engine)), store.txid, peer.auth), peer.address, soft + 0.01
    )
    assert [e for e in iter(engine.next_event, None) if isinstance(e, PutDone)] == []


def test_a_full_request_table_holds_background_stores_back() -> None:
    engine, peer = _alone(KadConfig(sessions=False, max_pending_requests=1))
    record = open_record(b"held back", b"v")
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    engine.tokens.remember(peer.identity.node_id, _TOKEN, 0.0)
    batch, _ = _batch(engine, background=True)
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.fanout.queue.extend(StoreItem(contact, record.key, batch) for _ in range(2))
    batch.outstanding = 2
    engine.fanout.pump(0.0)
    assert len(_stores_to(engine, peer)) == 1  # the second waits for a free request slot
    assert len(engine.fanout.queue) == 1 and engine.replication_backlog == 2
    # A foreground STORE that finds the table full is done at once, not stored.
    fore, fore_done = _batch(engine, background=False)
    engine.fanout.send_now(fore, [StoreItem(contact, record.key, fore, record, _TOKEN)], 0.0)
    assert fore_done == [0.0] and fore.acks == 0
    assert engine.stats["tx.refused.pending_limit"] >= 2


def test_a_background_store_of_a_record_gone_meanwhile_is_done_unsent() -> None:
    engine, peer = _alone()
    batch, done = _batch(engine, background=True)
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.fanout.queue.append(StoreItem(contact, key_id(b"gone"), batch))
    batch.outstanding = 1
    engine.fanout.pump(0.0)
    assert done == [0.0] and batch.sent == 0
    assert _stores_to(engine, peer) == []


@pytest.mark.parametrize("background", [True, False])
def test_a_store_without_a_token_first_asks_the_peer_for_one(background: bool) -> None:
    engine, peer = _alone()
    record = open_record(b"token first", b"v")
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    batch, done = _batch(engine, background=background)
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.tokens.from_peers.pop(peer.identity.node_id, None)
    items = [StoreItem(contact, record.key, batch, None if background else record)]
    if background:
        engine.fanout.queue.extend(items)
        batch.outstanding = 1
        engine.fanout.pump(0.0)
    else:
        engine.fanout.send_now(batch, items, 0.0)
    asks = [decode_datagram(d, peer.auth) for d, dst in engine.datagrams_to_send()]
    assert [type(env.message) for env in asks] == [FindNode]
    assert engine.stats["replicate.token_requests"] == 1
    answer = Nodes(addr(engine), _TOKEN, ())
    engine.receive_datagram(encode_message(answer, asks[0].txid, peer.auth), peer.address, 0.01)
    (store,) = _stores_to(engine, peer)
    assert store.message.token == _TOKEN
    engine.receive_datagram(
        encode_message(Stored(addr(engine)), store.txid, peer.auth), peer.address, 0.02
    )
    assert done == [0.02] and batch.acks == 1


def test_a_store_whose_token_never_comes_is_done_unsent() -> None:
    engine, peer = _alone()
    record = open_record(b"no token", b"v")
    assert engine.holdings.accept(record, None, 0.0, validate=False)[0] is None
    batch, done = _batch(engine, background=True)
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.tokens.from_peers.pop(peer.identity.node_id, None)
    engine.fanout.queue.extend(StoreItem(contact, record.key, batch) for _ in range(2))
    batch.outstanding = 2
    engine.fanout.pump(0.0)
    assert engine.stats["replicate.token_requests"] == 1  # one request for both items
    engine.handle_timer(engine.config.request_timeout + 0.1)
    assert done == [engine.config.request_timeout + 0.1] and batch.sent == 0
    assert engine.replication_backlog == 0


def test_a_late_older_signed_copy_is_corrected_through_the_fanout() -> None:
    """A replica that answers a signed get after it ended, with an older version, gets the
    newest one: a write-back STORE of the fan-out like every other."""
    engine = lone_engine(81, KadConfig(sessions=False, signed_get_quorum=1))
    first, late = Peer(82, ("192.0.2.51", 5000)), Peer(83, ("192.0.2.52", 5000))
    known_by(engine, first)
    known_by(engine, late)
    owner = Identity.generate(random.Random(84))
    old = make_signed(owner, b"s", b"old", 1, 3600)
    new = make_signed(owner, b"s", b"new", 2, 3600)
    qid = engine.get(new.key, 0.0, kind=RecordKind.SIGNED)
    asks = {dst: decode_datagram(d, first.auth) for d, dst in engine.datagrams_to_send()}
    answer = encode_message(Value(addr(engine), _TOKEN, new), asks[first.address].txid, first.auth)
    engine.receive_datagram(answer, first.address, 0.01)
    done = [e for e in iter(engine.next_event, None) if isinstance(e, GetDone)]
    assert [(d.query_id, d.record) for d in done] == [(qid, new)]
    engine.datagrams_to_send()
    answer = encode_message(Value(addr(engine), _TOKEN, old), asks[late.address].txid, late.auth)
    engine.receive_datagram(answer, late.address, 0.02)
    (store,) = _stores_to(engine, late)
    assert isinstance(store.message, Store) and store.message.record == new
    assert engine.stats["get.repaired"] == 1
    owners = {p.query_id for p in engine.requests.pending.values() if isinstance(p.request, Store)}
    assert owners == {FANOUT_QID}


@pytest.mark.parametrize("others", [_RECENT_SIGNED - 1, _RECENT_SIGNED])
def test_a_late_older_copy_is_corrected_only_while_its_get_is_recent(others: int) -> None:
    """The gets remember the newest record of the last 256 signed keys they found. A late
    older answer to a get is corrected while its key is among them (255 gets of other keys
    since); after 256 others its key is forgotten: the late answer is taken as it is, no
    write-back goes out."""
    engine = lone_engine(85, KadConfig(sessions=False, signed_get_quorum=1))
    first, late = Peer(86, ("192.0.2.61", 5000)), Peer(87, ("192.0.2.62", 5000))
    known_by(engine, first)
    known_by(engine, late)
    owner = Identity.generate(random.Random(88))

    def signed_get(name: bytes, found: Record) -> Envelope:
        """A get answered by ``first`` with ``found``; the request to ``late`` is left out."""
        qid = engine.get(found.key, 0.0, kind=RecordKind.SIGNED)
        asks = {dst: decode_datagram(d, first.auth) for d, dst in engine.datagrams_to_send()}
        answer = Value(addr(engine), _TOKEN, found)
        engine.receive_datagram(
            encode_message(answer, asks[first.address].txid, first.auth), first.address, 0.01
        )
        done = [e for e in iter(engine.next_event, None) if isinstance(e, GetDone)]
        assert [(d.query_id, d.record) for d in done] == [(qid, found)], name
        engine.datagrams_to_send()
        return asks[late.address]

    old = make_signed(owner, b"s", b"old", 1, 3600)
    new = make_signed(owner, b"s", b"new", 2, 3600)
    ask = signed_get(b"s", new)
    for i in range(others):
        signed_get(b"o%d" % i, make_signed(owner, b"o%d" % i, b"v", 1, 3600))
    repaired = engine.stats["get.repaired"]
    answer = encode_message(Value(addr(engine), _TOKEN, old), ask.txid, late.auth)
    engine.receive_datagram(answer, late.address, 0.02)
    stores = _stores_to(engine, late)
    if others < _RECENT_SIGNED:
        assert [s.message.record for s in stores] == [new]  # type: ignore[attr-defined]
        assert engine.stats["get.repaired"] == repaired + 1
    else:
        assert stores == []
        assert engine.stats["get.repaired"] == repaired


def test_a_token_request_refused_by_a_full_request_table_ends_the_store() -> None:
    """A foreground STORE with no token for its peer asks for one; when the request table is
    full that FIND_NODE is refused, and the item is done unsent at once (no token request
    left parked: once a slot is free, the next STORE to that peer asks again)."""
    engine, peer = _alone(KadConfig(sessions=False, max_pending_requests=1))
    record = open_record(b"no slot for the token", b"v")
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.tokens.from_peers.pop(peer.identity.node_id, None)
    engine.ping(("192.0.2.99", 9), 0.0)  # takes the one request slot
    engine.datagrams_to_send()
    batch, done = _batch(engine, background=False)
    engine.fanout.send_now(batch, [StoreItem(contact, record.key, batch, record)], 0.0)
    assert done == [0.0] and batch.sent == 0 and batch.acks == 0
    assert engine.stats["replicate.token_requests"] == 0
    assert engine.stats["tx.refused.pending_limit"] == 1
    assert engine.datagrams_to_send() == []
    later = engine.config.request_timeout + 0.1
    engine.handle_timer(later)  # the PING times out: its slot is free
    engine.datagrams_to_send()
    again, _ = _batch(engine, background=False)
    engine.fanout.send_now(again, [StoreItem(contact, record.key, again, record)], later)
    asks = [decode_datagram(d, peer.auth).message for d, _ in engine.datagrams_to_send()]
    assert [type(m) for m in asks] == [FindNode]
    assert engine.stats["replicate.token_requests"] == 1


def test_foreground_stores_parked_on_one_token_past_the_request_limit_are_done_unsent() -> None:
    """Two foreground STOREs to one peer wait for the same token (one FIND_NODE). When it
    arrives there is one free request slot: one STORE goes out, the other is done at once,
    unsent (a foreground batch is never held back); the batch ends with the one answer."""
    engine, peer = _alone(KadConfig(sessions=False, max_pending_requests=1))
    records = [open_record(b"first parked", b"v"), open_record(b"second parked", b"v")]
    contact = Contact(peer.identity.node_id, *peer.address)
    engine.tokens.from_peers.pop(peer.identity.node_id, None)
    batch, done = _batch(engine, background=False)
    items = [StoreItem(contact, r.key, batch, r) for r in records]
    engine.fanout.send_now(batch, items, 0.0)
    (ask,) = [decode_datagram(d, peer.auth) for d, _ in engine.datagrams_to_send()]
    assert isinstance(ask.message, FindNode)
    answer = Nodes(addr(engine), _TOKEN, ())
    engine.receive_datagram(encode_message(answer, ask.txid, peer.auth), peer.address, 0.01)
    (store,) = _stores_to(engine, peer)
    assert engine.stats["tx.refused.pending_limit"] == 1 and batch.sent == 1
    assert done == []
    engine.receive_datagram(
        encode_message(Stored(addr(engine)), store.txid, peer.auth), peer.address, 0.02
    )
    assert done == [0.02] and batch.acks == 1
