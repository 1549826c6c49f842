"""Datagrams in (core/wire.py): garbage is dropped, counted and never answered."""

from __future__ import annotations

import random

from enginenet import (
    Peer,
    lone_engine,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import (
    Ping,
    Pong,
)
from nautilus_kad.core.session import unknown_session_notice
from nautilus_kad.core.wire import _ANSWERED_PEERS


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
        "session.schema": unknown_session_notice(7, 1) + b"\x00",  # a notice is 14 bytes
    }
    for reason, data in samples.items():
        engine.receive_datagram(data, peer.address, 0.0)
        assert engine.stats[f"rx.dropped.{reason}"] == 1, reason
        assert engine.datagrams_to_send() == []
    for _ in range(50):
        engine.receive_datagram(rng.randbytes(rng.randrange(100, 1200)), peer.address, 0.0)
        assert engine.datagrams_to_send() == []
    assert engine.stats["rx.dropped"] == 55
    assert _dropped_total(engine) == 55
    assert engine.stats["rx.datagrams"] == 55
    assert engine.next_event() is None
    assert len(engine.table) == 0
    # Still serving honest traffic.
    assert isinstance(peer.request(engine, Ping(), 0.0).message, Pong)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1500))
@example(b"\xc1\x03")  # channel, relayed and release datagrams: each drop has a reason too
@example(b"\xc1\x04" + bytes(40))
@example(b"\xc1\x05" + bytes(40))
def test_random_datagrams_never_answered(data: bytes) -> None:
    engine = lone_engine(43)
    engine.receive_datagram(data, ("192.0.2.9", 9), 0.0)
    assert engine.datagrams_to_send() == []
    assert engine.stats["rx.dropped"] == 1
    assert _dropped_total(engine) == 1
    assert engine.next_event() is None


def test_the_answered_peers_table_keeps_the_most_recent() -> None:
    """An address that answered us is verified (our answers to it need no amplification
    limit); the table of such addresses is bounded: past its size the address that answered
    least recently is forgotten first, and a new answer makes an address the most recent."""
    engine = lone_engine(43)
    wire = engine.wire
    stranger = NodeId(12345)  # not in the table: only the answered addresses verify
    addresses = [(f"198.51.{n // 250}.{n % 250 + 1}", 7000) for n in range(_ANSWERED_PEERS + 1)]
    for address in addresses:
        wire.answered_from(address)
    assert not wire.address_verified(stranger, addresses[0], 0.0)
    assert all(wire.address_verified(stranger, a, 0.0) for a in addresses[1:])
    wire.answered_from(addresses[1])  # renewed: now the most recent
    wire.answered_from(addresses[0])  # back, in place of the least recent (addresses[2])
    assert wire.address_verified(stranger, addresses[0], 0.0)
    assert wire.address_verified(stranger, addresses[1], 0.0)
    assert not wire.address_verified(stranger, addresses[2], 0.0)
