"""Storage limits: a full store and a source over its quota refuse new records with a clear
ERROR, never crash and never evict what they hold."""

from __future__ import annotations

import asyncio

import pytest
from enginenet import EngineNet

from nautilus_kad import KadConfig, Node, QueryError
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import LookupDone, PutDone
from nautilus_kad.core.ids import NodeId, key_id
from nautilus_kad.core.messages import Error, ErrorCode, Store, Stored, error_for
from nautilus_kad.core.records import Record

BASE = KadConfig(k=4)


def _pair(victim_config: KadConfig) -> tuple[EngineNet, KadEngine, KadEngine]:
    net = EngineNet(config=BASE, seed=5)
    victim = net.add(config=victim_config)
    writer = net.add()
    net.join(writer, victim)
    return net, victim, writer


def _store(net: EngineNet, writer: KadEngine, victim: KadEngine, record: Record) -> object:
    """Send one STORE from ``writer`` to ``victim`` (token from a FIND_NODE) and return
    the victim's answer."""
    assert victim.address is not None and writer.address is not None
    writer.find_node(victim.node_id, net.now)
    net.deliver()
    net.take(writer, LookupDone)
    last = writer.tokens.last(victim.node_id)
    assert last is not None
    token, _ = last
    # A fresh transaction id each time: a byte-identical datagram is a replay, and dropped.
    txid = net.rng.randbytes(8)
    datagram = encode_message(Store(record, token), txid, writer.auth)
    victim.receive_datagram(datagram, writer.address, net.now)
    ((answer, to),) = victim.datagrams_to_send()
    assert to == writer.address
    return decode_datagram(answer, writer.auth).message


def test_a_full_store_refuses_new_keys_with_store_full() -> None:
    net, victim, writer = _pair(BASE.with_changes(max_records=3))
    records = [net.record(NodeId(i + 1), b"v%d" % i) for i in range(5)]
    answers = [_store(net, writer, victim, r) for r in records]
    assert all(isinstance(a, Stored) for a in answers[:3])
    for answer in answers[3:]:
        assert isinstance(answer, Error)
        assert answer.code is ErrorCode.STORE_FULL
        assert "store is full (3 records)" in answer.message
    # Nothing it held was evicted for the newcomers.
    assert len(victim.store) == 3
    assert all(victim.store.get(r.key, net.now) is not None for r in records[:3])
    assert victim.stats["store.rejected.full"] == 2
    # Updates of held keys still go through: a full store is not a frozen one.
    newer = Record(records[0].key, b"newer", records[0].timestamp_ms + 1, 3600)
    assert isinstance(_store(net, writer, victim, newer), Stored)
    assert victim.store.get(newer.key, net.now).record.value == b"newer"  # type: ignore[union-attr]


def test_a_source_over_its_quota_gets_quota_exceeded_others_do_not() -> None:
    net, victim, writer = _pair(BASE.with_changes(max_records_per_source=2))
    other = net.add()
    net.join(other, victim)
    answers = [_store(net, writer, victim, net.record(NodeId(i + 1), b"v")) for i in range(3)]
    assert [type(a) for a in answers] == [Stored, Stored, Error]
    refusal = answers[2]
    assert isinstance(refusal, Error) and refusal.code is ErrorCode.QUOTA_EXCEEDED
    assert "quota of 2 records from 10.0.0.3 reached" in refusal.message
    assert victim.stats["store.rejected.quota"] == 1
    # Another address still may store, and the writer may refresh what it stored.
    assert isinstance(_store(net, other, victim, net.record(NodeId(10), b"v")), Stored)
    again = victim.store.get(NodeId(1), net.now)
    assert again is not None
    assert isinstance(_store(net, writer, victim, again.record), Stored)


def test_quota_is_given_back_when_records_expire() -> None:
    net, victim, writer = _pair(BASE.with_changes(max_records_per_source=2))
    for i in range(2):
        _store(net, writer, victim, net.record(NodeId(i + 1), b"v", ttl=100))
    assert isinstance(_store(net, writer, victim, net.record(NodeId(3), b"v")), Error)
    net.advance(100 + BASE.expire_interval + 1)
    assert len(victim.store) == 0
    assert isinstance(_store(net, writer, victim, net.record(NodeId(3), b"v")), Stored)


def test_put_reports_the_refusals() -> None:
    writer_full = KadConfig(k=4, max_records=0)
    net2 = EngineNet(config=BASE, seed=6)
    victim2 = net2.add(config=BASE.with_changes(max_records=0))
    writer2 = net2.add(config=writer_full)
    net2.join(writer2, victim2)
    writer2.put(net2.record(NodeId(77), b"v"), net2.now)
    net2.deliver()
    (done,) = net2.take(writer2, PutDone)
    assert isinstance(done, PutDone)
    assert done.acks == 0
    assert len(done.errors) == 2  # the victim, and the writer's own full store
    assert all(code is ErrorCode.STORE_FULL for code, _ in done.errors)
    assert all("store is full (0 records)" in text for _, text in done.errors)


def test_node_put_raises_with_the_storers_reason() -> None:
    async def scenario() -> None:
        full = KadConfig(max_records=0)
        async with (
            await Node.start(config=full) as seed,
            await Node.start(bootstrap=[seed.address], config=full) as node,
        ):
            with pytest.raises(QueryError, match=r"store is full \(0 records\)"):
                await node.put(b"k", b"v")
            # The node is fine: it still answers.
            assert (await node.ping(seed.address)).contact.node_id == seed.node_id
            assert await node.get(b"k") is None
            assert node.engine.store.get(key_id(b"k"), 0) is None

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_flooding_a_full_store_does_not_crash_it() -> None:
    net, victim, writer = _pair(BASE.with_changes(max_records=50, max_records_per_source=20))
    refused = 0
    for i in range(200):
        answer = _store(net, writer, victim, net.record(NodeId(i + 1), b"x" * 900))
        refused += isinstance(answer, Error)
    assert refused == 180
    assert len(victim.store) == 20
    assert victim.stats["engine.errors"] == 0


def test_config_rejects_bad_durability_settings() -> None:
    with pytest.raises(ValueError):
        KadConfig(republish_jitter=1.0)
    with pytest.raises(ValueError):
        KadConfig(replication_window=0)


def test_quota_refusal_maps_to_a_query_error() -> None:
    assert ErrorCode.QUOTA_EXCEEDED == 9  # 6-8 are CAS_MISMATCH, BAD_SIGNATURE, STALE_SEQUENCE
    error = error_for(ErrorCode.QUOTA_EXCEEDED, "quota of 2 records from 10.0.0.1 reached")
    assert type(error) is QueryError and "quota" in str(error)
