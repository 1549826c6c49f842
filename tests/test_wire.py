"""Datagrams in (core/wire.py): garbage is dropped, counted and never answered."""

from __future__ import annotations

import random

from enginenet import (
    Peer,
    lone_engine,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.messages import (
    Ping,
    Pong,
)


def _dropped_total(engine: KadEngine) -> int:
    return sum(v for k, v in engine.stats.items() if k.startswith("rx.dropped."))


def test_garbage_is_counted_and_never_answered() -> None:
    engine = lone_engine(40)
    rng = random.Random(41)
    peer = Peer(42)
    valid = encode_message(Ping(), b"12345678", peer.auth)
    flipped = bytearray(valid)
    flipped[20] ^= 0xFF
    own = encode_message(Ping(), b"12345678", engine.auth)
    samples = {
        "undersize": b"\x00" * 10,
        "oversize": rng.randbytes(1201),
        "signature": bytes(flipped),
        "self": own,
    }
    for reason, data in samples.items():
        engine.receive_datagram(data, peer.address, 0.0)
        assert engine.stats[f"rx.dropped.{reason}"] == 1, reason
        assert engine.datagrams_to_send() == []
    for _ in range(50):
        engine.receive_datagram(rng.randbytes(rng.randrange(100, 1200)), peer.address, 0.0)
        assert engine.datagrams_to_send() == []
    assert engine.stats["rx.dropped"] == 54
    assert _dropped_total(engine) == 54
    assert engine.stats["rx.datagrams"] == 54
    assert engine.next_event() is None
    assert len(engine.table) == 0
    # Still serving honest traffic.
    assert isinstance(peer.request(engine, Ping(), 0.0).message, Pong)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
def test_random_datagrams_never_answered(data: bytes) -> None:
    engine = lone_engine(43)
    engine.receive_datagram(data, ("192.0.2.9", 9), 0.0)
    assert engine.datagrams_to_send() == []
    assert engine.stats["rx.dropped"] == 1
    assert _dropped_total(engine) == 1
    assert engine.next_event() is None
