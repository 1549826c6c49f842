"""Answering requests (core/serve.py, core/tokens.py, core/holdings.py): STORE needs a write
token, conflicts and expiry follow the record rules, a full store refuses."""

from __future__ import annotations

import logging
import random

import pytest
from enginenet import (
    Peer,
    held,
    known_by,
    lone_engine,
    open_record,
)

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import TOKEN_BYTES
from nautilus_kad.core.ids import NodeId, key_id
from nautilus_kad.core.messages import (
    Contact,
    Error,
    ErrorCode,
    FindValue,
    Nodes,
    Stored,
    Value,
)


def test_store_with_bad_token_is_refused() -> None:
    engine = lone_engine(20)
    peer = Peer(21)
    record = open_record(b"tok", b"v")
    for token in (b"", b"\x00" * TOKEN_BYTES, b"\x00" * (TOKEN_BYTES - 1)):
        answer = peer.store(engine, record, token, 0.0)
        assert isinstance(answer, Error)
        assert answer.code is ErrorCode.BAD_TOKEN
        assert answer.observed == peer.address
    assert engine.store.get(record.key, 0.0) is None
    assert len(engine.store) == 0
    assert engine.stats["store.rejected.token"] == 3
    # A real token works, and is bound to the requester's IP (not its port).
    token = peer.token(engine, 0.0)
    other_ip = ("192.0.2.51", peer.address[1])
    refused = peer.store(engine, record, token, 0.0, address=other_ip)
    assert isinstance(refused, Error)
    assert refused.code is ErrorCode.BAD_TOKEN
    same_ip = (peer.address[0], peer.address[1] + 1)
    assert isinstance(peer.store(engine, record, token, 0.0, address=same_ip), Stored)
    stored = engine.store.get(record.key, 0.0)
    assert stored is not None
    assert stored.record == record


def test_find_value_token_also_works() -> None:
    engine = lone_engine(22)
    peer = Peer(23)
    answer = peer.request(engine, FindValue(key_id(b"x")), 0.0).message
    assert isinstance(answer, Nodes)
    assert isinstance(peer.store(engine, open_record(b"x", b"1"), answer.token, 0.0), Stored)


def test_token_survives_one_rotation_not_two() -> None:
    engine = lone_engine(24)
    peer = Peer(25)
    rotation = engine.config.token_rotation
    token = peer.token(engine, 0.0)
    engine.handle_timer(rotation - 0.001)
    assert isinstance(peer.store(engine, open_record(b"r0", b"v"), token, rotation - 0.001), Stored)
    engine.handle_timer(rotation)  # first rotation: the token is now the previous one
    fresh = peer.token(engine, rotation)
    assert fresh != token
    assert isinstance(peer.store(engine, open_record(b"r1", b"v"), token, rotation), Stored)
    engine.handle_timer(2 * rotation)  # second rotation: too old
    answer = peer.store(engine, open_record(b"r2", b"v"), token, 2 * rotation)
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.BAD_TOKEN
    assert engine.store.get(key_id(b"r2"), 2 * rotation) is None
    # The token handed out after the first rotation is still good.
    assert isinstance(peer.store(engine, open_record(b"r3", b"v"), fresh, 2 * rotation), Stored)


def test_last_writer_wins() -> None:
    engine = lone_engine(26)
    peer = Peer(27)
    token = peer.token(engine, 0.0)
    first = open_record(b"lww", b"first", ts=1_000)
    assert isinstance(peer.store(engine, first, token, 0.0), Stored)
    older = open_record(b"lww", b"older", ts=500)
    answer = peer.store(engine, older, token, 1.0)
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.STALE_RECORD
    assert held(engine, first.key, 1.0) == first
    # The same record again is fine (idempotent).
    assert isinstance(peer.store(engine, first, token, 2.0), Stored)
    newer = open_record(b"lww", b"newer", ts=2_000)
    assert isinstance(peer.store(engine, newer, token, 3.0), Stored)
    assert held(engine, first.key, 3.0) == newer
    assert isinstance(peer.store(engine, first, token, 4.0), Error)
    # Equal timestamps: the larger value wins, whatever the arrival order.
    tie_small = open_record(b"lww", b"aaa", ts=2_000)
    tie_large = open_record(b"lww", b"zzz", ts=2_000)
    assert isinstance(peer.store(engine, tie_large, token, 5.0), Stored)
    assert isinstance(peer.store(engine, tie_small, token, 6.0), Error)
    assert held(engine, first.key, 6.0) == tie_large
    assert engine.stats["store.rejected.stale"] == 3


def test_invalid_record_is_refused() -> None:
    engine = lone_engine(28, KadConfig(max_value_size=100))
    peer = Peer(29)
    token = peer.token(engine, 0.0)
    answer = peer.store(engine, open_record(b"big", b"x" * 101), token, 0.0)
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.INVALID_RECORD
    assert len(engine.store) == 0


def test_records_expire_after_ttl() -> None:
    engine = lone_engine(30)
    peer = Peer(31)
    token = peer.token(engine, 0.0)
    record = open_record(b"ttl", b"short-lived", ttl=100)
    assert isinstance(peer.store(engine, record, token, 0.0), Stored)
    engine.handle_timer(99.0)
    assert len(engine.store) == 1
    found = peer.request(engine, FindValue(record.key), 99.0).message
    assert isinstance(found, Value)
    assert found.record == record
    expire_at = 100.0 + engine.config.expire_interval
    engine.handle_timer(expire_at)
    assert len(engine.store) == 0
    assert engine.stats["store.expired"] == 1
    gone = peer.request(engine, FindValue(record.key), expire_at).message
    assert isinstance(gone, Nodes)


def test_ttl_is_capped_by_config() -> None:
    engine = lone_engine(32, KadConfig(max_record_ttl=50.0))
    peer = Peer(33)
    token = peer.token(engine, 0.0)
    record = open_record(b"cap", b"v", ttl=10_000)
    assert isinstance(peer.store(engine, record, token, 10.0), Stored)
    stored = engine.store.get(record.key, 10.0)
    assert stored is not None
    assert stored.expires_at == pytest.approx(60.0)
    assert engine.store.get(record.key, 60.0) is None


def test_store_full_is_refused() -> None:
    engine = lone_engine(34, KadConfig(max_records=2))
    peer = Peer(35)
    token = peer.token(engine, 0.0)
    for i in range(2):
        assert isinstance(peer.store(engine, open_record(b"%d" % i, b"v"), token, 0.0), Stored)
    answer = peer.store(engine, open_record(b"third", b"v"), token, 0.0)
    assert isinstance(answer, Error)
    assert answer.code is ErrorCode.STORE_FULL
    # Updating an existing key is still allowed.
    assert isinstance(peer.store(engine, open_record(b"0", b"v", ts=9_999), token, 0.0), Stored)


def test_an_expired_record_is_refused_with_a_valid_token() -> None:
    """An open record lives ``ttl`` seconds from its publication, wherever it arrives: one
    whose time is up is refused (INVALID_RECORD) and not kept, even with a good token."""
    engine = lone_engine(24)
    peer = Peer(25)
    record = open_record(b"old", b"v", ts=1_000, ttl=3600)  # published at 1 s, gone at 3601
    now = 4_000.0
    token = peer.token(engine, now)
    refused = peer.store(engine, record, token, now)
    assert isinstance(refused, Error) and refused.code is ErrorCode.INVALID_RECORD
    assert "expired" in refused.message
    assert engine.stats["store.rejected.expired"] == 1
    assert engine.store.get(record.key, now) is None
    fresh = open_record(b"old", b"v", ts=int(now * 1000), ttl=3600)
    assert isinstance(peer.store(engine, fresh, token, now), Stored)


def test_served_requests_and_new_peers_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """At INFO the engine tells what it serves (kind, short sender id, address) and who
    joins its routing table; below INFO it formats nothing."""
    engine = lone_engine(26)
    peer = Peer(27)
    with caplog.at_level(logging.WARNING, logger="nautilus_kad.engine"):
        peer.request(engine, FindValue(key_id(b"quiet")), 0.0)
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="nautilus_kad.engine"):
        known_by(engine, peer)
        peer.request(engine, FindValue(key_id(b"x")), 1.0)
    messages = [record.getMessage() for record in caplog.records]
    short = peer.identity.node_id.short()
    assert f"FIND_VALUE from {short} at {peer.address[0]}:{peer.address[1]}" in messages
    assert any(m.startswith("peer ") and "joined the routing table" in m for m in messages)


def test_the_closest_named_are_the_k_nearest_usable_never_the_requester() -> None:
    """``_closest_for`` (what a NODES answer names): the k nearest non-stale entries of the
    table, the requester left out wherever it stands, nearest first."""
    rng = random.Random(17)
    engine = lone_engine(seed=23, config=KadConfig(subnet_limits=False))
    k = engine.config.k
    contacts = [
        Contact(NodeId.random(rng), f"10.9.{i // 250}.{i % 250 + 1}", 5000 + i) for i in range(300)
    ]
    for contact in contacts:
        engine.table.observe(contact, 1.0)
    held = list(engine.table)
    for contact in rng.sample(held, 30):
        engine.table.record_failure(contact.node_id)  # stale (or replaced by a spare)
    usable = [e.contact for e in engine.table.entries() if not e.failures]
    for _ in range(200):
        target = NodeId.random(rng)
        requester = rng.choice(usable).node_id if rng.random() < 0.7 else NodeId.random(rng)
        expected = sorted(
            (c for c in usable if c.node_id != requester), key=lambda c: c.node_id ^ target
        )[:k]
        assert list(engine._closest_for(target, requester)) == expected
