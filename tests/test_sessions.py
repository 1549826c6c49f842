"""Per-peer sessions (issue #5): the handshake, AEAD datagrams, replay and tamper protection,
recovery of a peer that lost its session state, expiry, bounds and anti-amplification."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import msgpack
import pytest
from enginenet import EngineNet
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nautilus_kad import Node
from nautilus_kad.core.auth import Authenticator, ReplayFilter
from nautilus_kad.core.codec import (
    TOKEN_MAX_BYTES,
    decode_datagram,
    decode_session_datagram,
    encode_message,
    encode_session_message,
    parse_session_header,
)
from nautilus_kad.core.config import MAX_DATAGRAM, KadConfig
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.events import LookupDone, PingDone, QueryFailed
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.limits import MAX_SEQ, VALUE_LIMITS
from nautilus_kad.core.messages import (
    Address,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Value,
)
from nautilus_kad.core.records import RecordKind
from nautilus_kad.core.session import (
    HEADER_BYTES,
    KIND_DATA,
    KIND_UNKNOWN_SESSION,
    SESSION_MAGIC,
    TAG_BYTES,
    HandshakeAccept,
    HandshakeOffer,
    Session,
    derive_keys,
    unknown_session_notice,
)
from nautilus_kad.core.session_table import SessionTable
from nautilus_kad.core.wire import _DECLINE_BACKOFF, _DECLINED

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------------------------


def pair(**config: object) -> tuple[EngineNet, KadEngine, KadEngine]:
    net = EngineNet(2, config=KadConfig().with_changes(**config), seed=3)
    return net, net.engine(0), net.engine(1)


def ping(net: EngineNet, a: KadEngine, b: KadEngine) -> PingDone | QueryFailed:
    event = net.wait_for(a, a.ping(net.address_of(b), net.now))
    assert isinstance(event, PingDone | QueryFailed)
    return event


def establish(net: EngineNet, a: KadEngine, b: KadEngine) -> tuple[Session, Session]:
    """Ping until ``a`` holds a session with ``b``: the first answer makes ``b`` a repeat
    peer, the next request offers the handshake."""
    for _ in range(3):
        assert isinstance(ping(net, a, b), PingDone)
    mine = a.sessions.for_send(net.address_of(b), b.node_id, net.now)
    theirs = b.sessions.for_send(net.address_of(a), a.node_id, net.now)
    assert mine is not None and theirs is not None
    return mine, theirs


class Tap:
    """Record datagrams in flight; optionally rewrite them."""

    def __init__(self, net: EngineNet) -> None:
        self.seen: list[tuple[bytes, Address, Address]] = []
        self.rewrite: dict[int, bytes] = {}
        net.filter = self

    def __call__(self, data: bytes, source: Address, destination: Address) -> bytes | None:
        self.seen.append((data, source, destination))
        return data


def last_from(tap: Tap, source: Address) -> bytes:
    return next(d for d, s, _ in reversed(tap.seen) if s == source)


# --- the handshake ---------------------------------------------------------------------------


def test_repeat_peers_agree_on_a_session_and_use_it() -> None:
    net, a, b = pair()
    tap = Tap(net)
    assert isinstance(ping(net, a, b), PingDone)
    first = tap.seen[0][0]
    assert first[0] != SESSION_MAGIC  # first contact: signed, no offer (a one-off is cheaper)
    assert decode_datagram(first, b.auth).handshake is None
    tap.seen.clear()
    assert isinstance(ping(net, a, b), PingDone)
    offer_request = decode_datagram(last_from(tap, net.address_of(a)), b.auth)
    assert isinstance(offer_request.message, Ping)
    assert isinstance(offer_request.handshake, HandshakeOffer)
    assert offer_request.handshake.to == net.address_of(b)
    accept_response = decode_datagram(last_from(tap, net.address_of(b)), a.auth)
    assert isinstance(accept_response.message, Pong)
    assert isinstance(accept_response.handshake, HandshakeAccept)
    # From now on both directions go in the session.
    mine, theirs = establish(net, a, b)
    assert mine.remote_sid == theirs.local_sid and mine.local_sid == theirs.remote_sid
    tap.seen.clear()
    assert isinstance(ping(net, a, b), PingDone)
    request, answer = tap.seen[0][0], tap.seen[1][0]
    assert request[0] == answer[0] == SESSION_MAGIC
    assert len(request) < 60  # vs ~110 bytes signed
    assert a.stats["session.established"] == 1 and b.stats["session.accepted"] == 1
    # The responder's requests use the same session (it is bidirectional).
    tap.seen.clear()
    assert isinstance(ping(net, b, a), PingDone)
    assert tap.seen[0][0][0] == SESSION_MAGIC
    assert b.sessions.handshakes_completed == 1


def test_session_datagram_layout() -> None:
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    data = encode_session_message(Ping(), b"12345678", mine, 0)
    kind, sid, counter = parse_session_header(data)
    assert data[0] == SESSION_MAGIC and kind == KIND_DATA
    assert sid == mine.remote_sid and counter == mine.send_counter
    assert len(data) == HEADER_BYTES + len(b"\x94\x01\xc4\x0812345678\x00\x90") + TAG_BYTES
    again = encode_session_message(Ping(), b"12345678", mine, 0)
    assert parse_session_header(again)[2] == counter + 1
    assert data[HEADER_BYTES:] != again[HEADER_BYTES:]  # encrypted under a fresh nonce


def test_keys_bind_ids_ephemerals_sids_and_addresses() -> None:
    base: list[object] = [
        b"s" * 32,
        NodeId(1),
        NodeId(2),
        b"e" * 32,
        b"f" * 32,
        7,
        8,
        ("192.0.2.1", 1000),
        ("192.0.2.2", 2000),
    ]
    reference = derive_keys(*base)  # type: ignore[arg-type]
    assert reference[0] != reference[1]
    changes: list[object] = [
        b"t" * 32,
        NodeId(3),
        NodeId(3),
        b"g" * 32,
        b"g" * 32,
        9,
        9,
        ("192.0.2.1", 1001),
        ("192.0.2.3", 2000),
    ]
    for index, changed in enumerate(changes):
        args = list(base)
        args[index] = changed
        assert derive_keys(*args) != reference, index  # type: ignore[arg-type]


def test_low_order_ephemeral_key_is_not_accepted() -> None:
    net, a, b = pair()
    assert isinstance(ping(net, a, b), PingDone)
    client = Authenticator(Identity.generate(random.Random(9)))
    offer = HandshakeOffer(bytes(32), 77, net.address_of(b))  # the all-zero point
    data = encode_message(Ping(), b"x" * 8, client, FLAG_CLIENT, handshake=offer)
    net.inject(data, ("10.0.0.9", 9), net.address_of(b))
    answers = [d for d, dst in b.datagrams_to_send() if dst == ("10.0.0.9", 9)]
    assert len(answers) == 1
    envelope = decode_datagram(answers[0], client)
    assert isinstance(envelope.message, Pong) and envelope.handshake is None
    assert len(b.sessions) == 0


def test_a_low_order_key_in_a_responders_accept_makes_no_session() -> None:
    """The initiator's twin of the test above: a hostile responder answers our offer with an
    accept carrying the all-zero point (a validly signed response). The answer still counts
    (PING done), but no session is made: the offer is dropped, counted as declined, and the
    peer is not offered a session again."""
    net, a, b = pair()
    forged: list[bytes] = []

    def zero_accept(data: bytes, source: Address, destination: Address) -> bytes:
        if source != net.address_of(b) or data[0] == SESSION_MAGIC:
            return data
        envelope = decode_datagram(data, a.auth)
        if not isinstance(envelope.handshake, HandshakeAccept):
            return data
        accept = HandshakeAccept(bytes(32), envelope.handshake.sid)
        data = encode_message(
            envelope.message, envelope.txid, b.auth, envelope.flags, handshake=accept
        )
        forged.append(data)
        return data

    net.filter = zero_accept
    for _ in range(4):
        assert isinstance(ping(net, a, b), PingDone)
    assert len(forged) == 1  # one offer, answered with the bad key; none after
    assert a.stats["session.offered"] == 1 and a.stats["session.declined"] == 1
    assert a.stats["session.established"] == 0
    assert len(a.sessions) == 0 and not a.sessions.offering(net.address_of(b))


def test_a_peer_without_sessions_is_not_offered_again() -> None:
    net = EngineNet(1, seed=4)
    a = net.engine(0)
    b = net.add(config=KadConfig(sessions=False))
    for _ in range(5):
        assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 1 and a.stats["session.declined"] == 1
    assert len(a.sessions) == len(b.sessions) == 0


def test_a_declined_peer_is_offered_again_after_the_backoff() -> None:
    """A refusal is remembered for the decline backoff, then the periodic upkeep forgets it:
    the next request offers a session again."""
    net = EngineNet(1, seed=4)
    a = net.engine(0)
    b = net.add(config=KadConfig(sessions=False))
    for _ in range(3):
        assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 1 and a.stats["session.declined"] == 1
    net.advance(_DECLINE_BACKOFF / 2)
    assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 1
    net.advance(_DECLINE_BACKOFF / 2 + 60.0)
    assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 2 and a.stats["session.declined"] == 2


def test_a_confirmed_session_verifies_its_peers_address() -> None:
    """A client is in no routing table and never answers our requests, so neither proves its
    address; a confirmed session bound to that address does (our answers to it need no
    amplification limit), while an address it never talked to us from stays unverified."""
    net = EngineNet(1, seed=4)
    server = net.engine(0)
    client = net.add(config=KadConfig(mode="client"))
    assert not server.wire.address_verified(client.node_id, net.address_of(client), net.now)
    _, theirs = establish(net, client, server)
    assert not theirs.confirmed  # the accept is sent; nothing came in the session yet
    assert not server.wire.address_verified(client.node_id, net.address_of(client), net.now)
    assert isinstance(ping(net, client, server), PingDone)  # in the session
    assert theirs.confirmed and client.node_id not in server.table
    assert server.wire.address_verified(client.node_id, net.address_of(client), net.now)
    assert not server.wire.address_verified(client.node_id, ("10.9.9.9", 9), net.now)


def test_the_declined_table_forgets_the_oldest_refusal() -> None:
    """A peer that declined our offer is not offered again (for a while); the table of such
    peers is bounded, and past its size the oldest refusal is forgotten: that peer is
    offered a session once more (and declines again)."""
    net = EngineNet(1, seed=4)
    a = net.engine(0)
    b = net.add(config=KadConfig(sessions=False))
    for _ in range(3):
        assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 1 and a.stats["session.declined"] == 1
    pong = Envelope(b"t" * 8, b.node_id, b.identity.public_key, 0, Pong(net.address_of(a)))
    others = [(f"198.51.{n // 250}.{n % 250 + 1}", 7000) for n in range(_DECLINED)]
    for n, address in enumerate(others):  # answers to our offers that carried no accept
        a.wire.finish_handshake(HandshakeOffer(bytes(32), n, address), pong, address, net.now)
        if n == _DECLINED - 2:  # b's refusal is still the oldest one kept
            assert isinstance(ping(net, a, b), PingDone)
            assert a.stats["session.offered"] == 1
    assert isinstance(ping(net, a, b), PingDone)
    assert a.stats["session.offered"] == 2
    assert a.stats["session.declined"] == 2 + _DECLINED
    assert len(a.sessions) == 0


# --- tampering and replays -------------------------------------------------------------------


def test_tampered_session_datagrams_are_dropped() -> None:
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    source, target = net.address_of(a), net.address_of(b)
    served = b.stats["rx.request.PING"]
    for position in range(HEADER_BYTES, len(encode_session_message(Ping(), b"t" * 8, mine))):
        data = bytearray(encode_session_message(Ping(), b"t" * 8, mine))
        data[position] ^= 0x01
        net.inject(bytes(data), source, target)
    assert b.stats["rx.request.PING"] == served
    assert b.stats["rx.dropped.session.auth"] > 0
    assert not [d for d, _ in b.datagrams_to_send()]  # no answer of any kind
    # The header is authenticated too: a changed counter fails the tag.
    data = bytearray(encode_session_message(Ping(), b"t" * 8, mine))
    data[-TAG_BYTES - 1] ^= 0x80
    data[13] ^= 0x01
    net.inject(bytes(data), source, target)
    assert b.stats["rx.request.PING"] == served
    # The session still works afterwards.
    assert isinstance(ping(net, a, b), PingDone)


def test_replayed_session_datagrams_are_dropped() -> None:
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    source, target = net.address_of(a), net.address_of(b)
    first = encode_session_message(Ping(), b"r" * 8, mine)
    net.inject(first, source, target)
    assert len(b.datagrams_to_send()) == 1
    served = b.stats["rx.request.PING"]
    net.inject(first, source, target)
    assert b.stats["rx.request.PING"] == served
    assert b.stats["rx.dropped.session.replay"] == 1
    assert b.datagrams_to_send() == []


def test_replay_window_accepts_reordering_and_rejects_the_too_old() -> None:
    net, a, b = pair()
    mine, theirs = establish(net, a, b)
    source, target = net.address_of(a), net.address_of(b)
    batch = [encode_session_message(Ping(), bytes([i]) * 8, mine) for i in range(100)]
    served = b.stats["rx.request.PING"]
    order = [*range(50, 100), *range(60, 40, -1), 5, 99]
    for i in order:
        net.inject(batch[i], source, target)
    # 50..99 arrive, then 41..49 late but new; 50..60 again, 5 (older than the 64-counter
    # window) and 99 again are replays.
    assert b.stats["rx.request.PING"] == served + 59
    assert b.stats["rx.dropped.session.replay"] == 13
    # Within the window, an older counter never seen is accepted; one past it is not.
    net.inject(batch[40], source, target)
    net.inject(batch[30], source, target)
    assert b.stats["rx.request.PING"] == served + 60
    assert b.stats["rx.dropped.session.replay"] == 14
    assert theirs.replayed(parse_session_header(batch[40])[2])


def test_replayed_handshake_does_not_create_a_usable_session() -> None:
    net, a, b = pair(session_idle_timeout=10_000.0)
    tap = Tap(net)
    establish(net, a, b)
    offer = next(
        d
        for d, s, _ in tap.seen
        if s == net.address_of(a)
        and d[0] != SESSION_MAGIC
        and decode_datagram(d, b.auth).handshake is not None
    )
    before = len(b.sessions)
    # Replayed by an attacker soon after: recognised and dropped, unanswered.
    net.inject(offer, net.address_of(a), net.address_of(b))
    assert b.stats["rx.dropped.replay"] == 1
    assert b.datagrams_to_send() == [] and len(b.sessions) == before
    # Replayed after the replay filter forgot it: b answers (the signed request is valid) and
    # makes a half-open session, but nobody can use it (the offer's private key is a's), a
    # drops the answer (its txid is long gone) and keeps using its own session.
    net.advance(2 * b.config.token_rotation + 1)
    net.inject(offer, net.address_of(a), net.address_of(b))
    assert len(b.sessions) == before + 1
    net.deliver()
    assert a.stats["rx.dropped.unsolicited"] >= 1
    tap.seen.clear()
    assert isinstance(ping(net, a, b), PingDone)
    assert tap.seen[0][0][0] == SESSION_MAGIC


def test_replayed_signed_requests_are_dropped_and_old_stores_lose_their_token() -> None:
    from test_record_kinds import Client, signed  # noqa: PLC0415

    net = EngineNet(1, seed=6)
    storer = net.engine(0)
    client = Client(net, storer)
    token = client.token(signed().key)
    data = encode_message(Store(signed(b"v", 1), token), b"s" * 8, client.auth, FLAG_CLIENT)
    net.inject(data, client.address, net.address_of(storer))
    assert len(storer.datagrams_to_send()) == 1
    served = storer.stats["rx.request.STORE"]
    net.inject(data, client.address, net.address_of(storer))
    assert storer.stats["rx.request.STORE"] == served
    assert storer.stats["rx.dropped.replay"] == 1
    assert storer.datagrams_to_send() == []
    # Once the filter forgot it, the write token it carries has expired too.
    net.advance(2 * storer.config.token_rotation + 1)
    net.inject(data, client.address, net.address_of(storer))
    answers = [d for d, dst in storer.datagrams_to_send() if dst == client.address]
    error = decode_datagram(answers[0], client.auth).message
    assert isinstance(error, Error) and error.code is ErrorCode.BAD_TOKEN
    assert len(storer.replays) <= storer.config.max_replay_entries


def test_replay_filter_is_bounded() -> None:
    replays = ReplayFilter(window=100.0, capacity=3)
    for i in range(5):
        assert not replays.replayed(bytes([i]) * 64, 0.0)
    assert len(replays) == 3
    assert replays.replayed(bytes([4]) * 64, 1.0)
    assert not replays.replayed(bytes([0]) * 64, 1.0)  # forgotten (capacity)
    assert not replays.replayed(bytes([4]) * 64, 200.0)  # forgotten (window)


def test_a_session_is_bound_to_its_address() -> None:
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    elsewhere = ("10.0.0.66", 6666)
    served = b.stats["rx.request.PING"]
    data = encode_session_message(Ping(), b"m" * 8, mine)
    net.inject(data, elsewhere, net.address_of(b))
    assert b.stats["rx.request.PING"] == served
    # The only answer is the 14-byte notice, to the source, smaller than what came in.
    sent = b.datagrams_to_send()
    assert [(len(d), dst) for d, dst in sent] == [(HEADER_BYTES, elsewhere)]
    assert len(sent[0][0]) < len(data)


@SETTINGS
@given(garbage=st.binary(max_size=MAX_DATAGRAM - 1))
def test_session_garbage_only_counts_as_dropped(garbage: bytes) -> None:
    net, a, b = _ESTABLISHED
    data = bytes([SESSION_MAGIC]) + garbage
    before = b.stats["rx.dropped"]
    b.receive_datagram(data, net.address_of(a), net.now)  # never raises
    assert b.stats["rx.dropped"] == before + 1
    for answer, _ in b.datagrams_to_send():
        assert len(answer) <= len(data)


def _established() -> tuple[EngineNet, KadEngine, KadEngine]:
    net, a, b = pair()
    establish(net, a, b)
    return net, a, b


_ESTABLISHED = _established()


@SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_session_datagrams_never_decode(flips: list[tuple[int, int]]) -> None:
    net, a, b = _ESTABLISHED
    mine = a.sessions.for_send(net.address_of(b), b.node_id, net.now)
    theirs = b.sessions.for_send(net.address_of(a), a.node_id, net.now)
    assert mine is not None and theirs is not None
    original = encode_session_message(FindNode(NodeId(5)), b"f" * 8, mine)
    data = bytearray(original)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    assume(bytes(data) != original)
    counter = int.from_bytes(data[6:14], "big")
    with pytest.raises(DecodeError):
        if data[0] != SESSION_MAGIC or data[2:6] != theirs.local_sid.to_bytes(4, "big"):
            raise DecodeError("not this session")
        decode_session_datagram(bytes(data), theirs, counter, net.now)


# --- losing session state --------------------------------------------------------------------


def test_a_peer_that_lost_its_sessions_recovers_with_a_fresh_handshake() -> None:
    net, a, b = pair()
    establish(net, a, b)
    b.sessions = SessionTable(b.config)  # b restarted (same key, same address)
    tap = Tap(net)
    event = ping(net, a, b)
    assert isinstance(event, PingDone)
    kinds = [(d[0] == SESSION_MAGIC, len(d)) for d, _, _ in tap.seen]
    # session request → 14-byte notice → signed retry with an offer → signed answer (accept)
    assert kinds[0][0] and kinds[1] == (True, HEADER_BYTES)
    assert not kinds[2][0] and isinstance(
        decode_datagram(tap.seen[2][0], b.auth).handshake, HandshakeOffer
    )
    assert a.stats["session.lost_by_peer"] == 1
    assert event.rtt < 0.01  # no timeout on the way
    tap.seen.clear()
    assert isinstance(ping(net, a, b), PingDone)
    assert tap.seen[0][0][0] == SESSION_MAGIC  # back in a (new) session


def test_the_initiator_losing_its_sessions_recovers_too() -> None:
    net, a, b = pair()
    establish(net, a, b)
    a.sessions = SessionTable(a.config)
    # b still holds the session and uses it for its own request; a answers with a notice.
    assert isinstance(ping(net, b, a), PingDone)
    assert b.stats["session.lost_by_peer"] == 1
    assert isinstance(ping(net, a, b), PingDone)


def test_recovery_is_tried_once() -> None:
    net, a, b = pair(request_timeout=1.0, max_soft_timeout=0.5)
    establish(net, a, b)

    def forgetful(data: bytes, source: Address, destination: Address) -> bytes | None:
        if destination == net.address_of(b):
            b.sessions = SessionTable(b.config)  # b forgets, and cannot answer signed either
            return data if data[0] == SESSION_MAGIC else None
        return data

    net.filter = forgetful
    assert isinstance(ping(net, a, b), QueryFailed)
    assert a.stats["session.lost_by_peer"] == 1


def test_a_forged_notice_is_ignored() -> None:
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    for sid, counter in ((mine.remote_sid, 12345), (mine.remote_sid ^ 1, mine.send_counter)):
        net.inject(unknown_session_notice(sid, counter), net.address_of(b), net.address_of(a))
    assert a.stats["rx.dropped.session.notice"] == 2
    assert a.sessions.for_send(net.address_of(b), b.node_id, net.now) is mine


def test_notice_from_another_address_is_ignored() -> None:
    net, a, b = pair(request_timeout=1.0, max_soft_timeout=0.5)
    mine, _ = establish(net, a, b)
    net.filter = lambda data, source, destination: None  # b is unreachable
    qid = a.ping(net.address_of(b), net.now)
    net.deliver()
    notice = unknown_session_notice(mine.remote_sid, mine.send_counter)
    net.inject(notice, ("10.0.0.66", 1), net.address_of(a))
    assert a.stats["session.lost_by_peer"] == 0
    assert isinstance(net.wait_for(a, qid), QueryFailed)


# --- expiry and bounds -----------------------------------------------------------------------


def test_a_lost_lookup_request_in_a_session_is_sent_again_with_the_next_counter() -> None:
    """Peers that talk often talk in sessions, so a lost datagram there must be recovered
    like a signed one: once past the soft timeout, the request goes again, sealed with a
    fresh counter (the peer's replay window would drop a byte-for-byte copy)."""
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    dropped: list[bytes] = []

    def lose_first_request(data: bytes, source: Address, destination: Address) -> bytes | None:
        if source == net.address_of(a) and not dropped:
            dropped.append(data)
            return None
        return data

    net.filter = lose_first_request
    counter = mine.send_counter
    started = net.now
    event = net.wait_for(a, a.find_node(NodeId(4242), net.now))
    assert isinstance(event, LookupDone)
    assert [c.node_id for c in event.contacts] == [b.node_id]
    assert dropped and dropped[0][0] == SESSION_MAGIC
    assert parse_session_header(dropped[0])[2] == counter + 1
    assert mine.send_counter == counter + 2  # the copy went in the same session
    assert a.stats["tx.retransmits"] == 1
    # Answered after the soft timeout, well before the grace or the hard deadline run out.
    assert net.now - started < a.config.slow_grace
    entry = a.table.get(b.node_id)
    assert entry is not None and entry.failures == 0


def test_idle_sessions_expire_and_are_replaced() -> None:
    net, a, b = pair(session_idle_timeout=60.0)
    old, _ = establish(net, a, b)
    net.advance(61.0)
    assert a.sessions.for_send(net.address_of(b), b.node_id, net.now) is None
    assert isinstance(ping(net, a, b), PingDone)  # signed, with a new offer
    new = a.sessions.for_send(net.address_of(b), b.node_id, net.now)
    assert new is not None and new is not old
    net.advance(60.0)
    assert len(a.sessions) == len(b.sessions) == 1  # the expired ones were swept


def test_sessions_are_replaced_after_their_lifetime() -> None:
    net, a, b = pair(session_max_lifetime=100.0)
    old, _ = establish(net, a, b)
    for _ in range(12):
        net.advance(9.0)
        assert isinstance(ping(net, a, b), PingDone)
    current = a.sessions.for_send(net.address_of(b), b.node_id, net.now)
    assert current is not None and current is not old
    assert net.now - current.created < 100.0


def test_receiver_rejects_an_expired_session_with_a_notice() -> None:
    net, a, b = pair(session_idle_timeout=60.0)
    mine, _ = establish(net, a, b)
    net.now += 61.0  # b has not swept yet, but checks on receipt
    data = encode_session_message(Ping(), b"e" * 8, mine)
    net.inject(data, net.address_of(a), net.address_of(b))
    sent = b.datagrams_to_send()
    assert [len(d) for d, _ in sent] == [HEADER_BYTES]
    assert b.stats["rx.dropped.session.unknown"] == 1


def test_session_table_is_bounded_and_evicts_half_open_first() -> None:
    net = EngineNet(1, config=KadConfig(max_sessions=3), seed=8)
    server = net.engine(0)
    clients = [net.add() for _ in range(5)]
    for client in clients[:3]:
        establish(net, client, server)
    for session in server.sessions:
        session.confirmed = True
    # Two offers whose initiator never follows up: half-open, evicted before the others.
    stranger = Authenticator(Identity.generate(random.Random(1)))
    for i in range(2):
        offer = HandshakeOffer(
            clients[3].auth.new_ephemeral(random.Random(i))[1], 5 + i, net.address_of(server)
        )
        data = encode_message(Ping(), bytes(8), stranger, FLAG_CLIENT, handshake=offer)
        net.inject(data, ("10.0.0.77", 7000 + i), net.address_of(server))
    server.datagrams_to_send()
    assert len(server.sessions) == 3
    survivors = {s.address for s in server.sessions}
    assert ("10.0.0.77", 7001) in survivors and ("10.0.0.77", 7000) not in survivors
    confirmed = [s for s in server.sessions if s.confirmed]
    assert len(confirmed) == 2


def test_live_cipher_contexts_are_bounded_and_a_dropped_one_is_rebuilt() -> None:
    net = EngineNet(1, config=KadConfig(session_ciphers=2), seed=8)
    server = net.engine(0)
    clients = [net.add() for _ in range(3)]
    for client in clients:
        establish(net, client, server)
    pool = server.sessions.ciphers
    assert len(pool) == 2
    live = sum((s._send is not None) + (s._recv is not None) for s in server.sessions)
    assert live <= 2
    # Every session still works: a dropped context is made again from the key it kept.
    for client in clients:
        before = server.stats["rx.session"]
        assert isinstance(ping(net, client, server), PingDone)
        assert server.stats["rx.session"] == before + 1
    live = sum((s._send is not None) + (s._recv is not None) for s in server.sessions)
    assert live <= 2


# --- sizes and amplification -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(RecordKind))
def test_max_store_and_value_fit_in_a_session_datagram(kind: RecordKind) -> None:
    from test_record_kinds import _widest  # noqa: PLC0415

    net, a, b = _ESTABLISHED
    mine = a.sessions.for_send(net.address_of(b), b.node_id, net.now)
    assert mine is not None
    record = _widest(kind, VALUE_LIMITS[kind])
    token = b"\xaa" * TOKEN_MAX_BYTES
    messages: list[Message] = [
        Store(record, token, MAX_SEQ),
        Value(("2001:db8::ffff", 65535), token, record),
    ]
    for message in messages:
        data = encode_session_message(message, b"s" * 8, mine, 255)
        assert len(data) <= MAX_DATAGRAM


def _stranger_request(message: Message, pad_to: int = 0, offer: bool = False) -> bytes:
    auth = Authenticator(Identity.generate(random.Random(len(repr(message)) + pad_to)))
    handshake = None
    if offer:
        handshake = HandshakeOffer(auth.new_ephemeral(random.Random(3))[1], 9, ("10.0.0.1", 1))
    txid = _TXIDS.randbytes(8)  # distinct requests (an identical one would be a replay)
    return encode_message(message, txid, auth, FLAG_CLIENT, handshake=handshake, pad_to=pad_to)


_TXIDS = random.Random(77)


def _answer_to(net: EngineNet, server: KadEngine, data: bytes) -> bytes:
    victim = ("10.0.0.200", 53)  # a spoofed source: the answer goes to the victim
    net.inject(data, victim, net.address_of(server))
    answers = [d for d, dst in server.datagrams_to_send() if dst == victim]
    assert len(answers) == 1
    return answers[0]


@pytest.fixture(scope="module")
def populated() -> tuple[EngineNet, KadEngine]:
    net = EngineNet(25, config=KadConfig(k=20), seed=21)
    net.join_all()
    server = net.engine(0)
    assert len(server.table) >= 20
    return net, server


@pytest.mark.parametrize("offer", [False, True])
def test_answers_to_unverified_sources_are_not_amplified(
    populated: tuple[EngineNet, KadEngine], offer: bool
) -> None:
    net, server = populated
    factor = server.config.amplification_factor
    for message in (Ping(), FindNode(NodeId(77)), FindValue(NodeId(78))):
        request = _stranger_request(message, offer=offer)
        answer = _answer_to(net, server, request)
        assert len(answer) <= factor * len(request), message
    # NODES are trimmed to fit, not dropped.
    answer = _answer_to(net, server, _stranger_request(FindNode(NodeId(77)), offer=offer))
    nodes = decode_datagram(answer, Authenticator(Identity.generate(random.Random(2)))).message
    assert isinstance(nodes, Nodes) and 0 < len(nodes.contacts) < 20


def test_a_padded_first_contact_gets_a_full_answer(
    populated: tuple[EngineNet, KadEngine],
) -> None:
    net, server = populated
    pad = -(-MAX_DATAGRAM // server.config.amplification_factor)
    request = _stranger_request(FindNode(NodeId(77)), pad_to=pad, offer=True)
    assert len(request) == pad
    answer = _answer_to(net, server, request)
    envelope = decode_datagram(answer, Authenticator(Identity.generate(random.Random(2))))
    assert isinstance(envelope.message, Nodes) and len(envelope.message.contacts) == 20
    assert isinstance(envelope.handshake, HandshakeAccept)


def test_a_maximal_value_goes_out_without_the_accept() -> None:
    from test_record_kinds import _widest  # noqa: PLC0415

    net = EngineNet(1, seed=9)
    server = net.engine(0)
    record = dataclasses.replace(_widest(RecordKind.OPEN, 1000), key=NodeId(99))
    server.store.put(record, net.now, net.now + 60)
    pad = -(-MAX_DATAGRAM // server.config.amplification_factor)
    # Padded, with an offer: the VALUE fills the datagram, so the accept is left out ...
    request = _stranger_request(FindValue(NodeId(99)), pad_to=pad, offer=True)
    envelope = decode_datagram(_answer_to(net, server, request), _READER)
    assert isinstance(envelope.message, Value) and envelope.message.record == record
    assert envelope.handshake is None and len(server.sessions) == 0
    # ... and unpadded, the requester gets NODES (it may ask again, padded).
    small = _stranger_request(FindValue(NodeId(99)))
    answer = _answer_to(net, server, small)
    assert isinstance(decode_datagram(answer, _READER).message, Nodes)
    assert len(answer) <= server.config.amplification_factor * len(small)
    assert server.stats["tx.value_withheld"] == 1


def test_engines_pad_signed_lookups_and_get_full_answers(
    populated: tuple[EngineNet, KadEngine],
) -> None:
    net, server = populated
    newcomer = net.add()
    tap = Tap(net)
    qid = newcomer.bootstrap([net.address_of(server)], net.now)
    net.wait_for(newcomer, qid)
    net.filter = None
    finds = [
        d
        for d, s, _ in tap.seen
        if s == net.address_of(newcomer)
        and d[0] != SESSION_MAGIC
        and isinstance(decode_datagram(d, server.auth).message, FindNode)
    ]
    assert finds and all(len(d) >= 400 for d in finds)
    assert server.stats["tx.refused.amplification"] == 0
    assert len(newcomer.table) >= 20


def test_unknown_session_notice_is_never_larger_than_its_cause() -> None:
    net, _, b = pair()
    notice = unknown_session_notice(1, 2)
    assert len(notice) == HEADER_BYTES == 14
    assert notice[0] == SESSION_MAGIC and notice[1] == KIND_UNKNOWN_SESSION
    # Too short to be a data datagram: not answered at all.
    for size in range(HEADER_BYTES + TAG_BYTES - 1):
        b.receive_datagram(
            bytes([SESSION_MAGIC, KIND_DATA]) + bytes(size), ("10.0.0.5", 5), net.now
        )
    assert b.datagrams_to_send() == []


# --- real sockets ----------------------------------------------------------------------------


@pytest.mark.integration
def test_sessions_on_loopback_and_recovery_after_a_restart() -> None:
    async def main() -> None:
        config = KadConfig(request_timeout=1.0, max_soft_timeout=0.5)
        identity = Identity.generate()
        server = await Node.start("127.0.0.1", 0, config=config, identity=identity)
        port = server.address[1]
        async with await Node.start("127.0.0.1", 0, [server.address], config=config) as client:
            for _ in range(5):
                await client.ping(server.address)
            await client.put(b"k", b"v")
            assert await client.get(b"k") == b"v"
            assert client.stats["session.established"] >= 1
            assert client.stats["tx.session"] >= 3
            assert server.stats.get("tx.session_notices", 0) == 0
            # The server restarts on the same port with the same key: no session state.
            await server.stop()
            server = await Node.start("127.0.0.1", port, config=config, identity=identity)
            try:
                result = await client.ping(server.address)
                assert result.contact.node_id == identity.node_id
                assert client.stats["session.lost_by_peer"] == 1
                assert server.stats["tx.session_notices"] == 1
                for _ in range(3):
                    await client.ping(server.address)
                assert client.stats["session.established"] >= 2
            finally:
                await server.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


# --- strict decoding of the handshake fields -------------------------------------------------


_SIGNER = Identity.generate(random.Random(30))
_READER = Authenticator(Identity.generate(random.Random(31)))
_EPH = b"\x09" * 32
_ADDR = [bytes([192, 0, 2, 1]), 7400]


def _hs_envelope(msg_type: int, body: list[object], *tail: object) -> bytes:
    fields = [1, msg_type, b"t" * 8, _SIGNER.public_key, 0, body, *tail]
    payload = msgpack.packb(fields, use_bin_type=True)
    return payload + _SIGNER.sign(payload)


_PONG = [[bytes([192, 0, 2, 9]), 9]]
BAD_HANDSHAKES = [
    ("7 fields", _hs_envelope(0x01, [], None)),
    ("9 fields", _hs_envelope(0x01, [], None, b"", b"")),
    ("padding not bytes", _hs_envelope(0x01, [], None, "pad")),
    ("padding nil", _hs_envelope(0x01, [], None, None)),
    ("short ephemeral", _hs_envelope(0x01, [], [b"\x01" * 31, 5, _ADDR], b"")),
    ("sid 0", _hs_envelope(0x01, [], [_EPH, 0, _ADDR], b"")),
    ("sid 2**32", _hs_envelope(0x01, [], [_EPH, 2**32, _ADDR], b"")),
    ("bool sid", _hs_envelope(0x01, [], [_EPH, True, _ADDR], b"")),
    ("offer without address", _hs_envelope(0x01, [], [_EPH, 5], b"")),
    ("accept in a request", _hs_envelope(0x01, [], [_EPH, 5], b"")),
    ("offer in a response", _hs_envelope(0x81, _PONG, [_EPH, 5, _ADDR], b"")),
    ("offer port 0", _hs_envelope(0x01, [], [_EPH, 5, [_ADDR[0], 0]], b"")),
    ("handshake not a list", _hs_envelope(0x01, [], b"hs", b"")),
]


@pytest.mark.parametrize(("name", "data"), BAD_HANDSHAKES, ids=[n for n, _ in BAD_HANDSHAKES])
def test_malformed_handshake_fields_are_rejected(name: str, data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_datagram(data, _READER)
    assert info.value.reason == "schema", name


def test_wellformed_handshake_fields_decode() -> None:
    offer = decode_datagram(_hs_envelope(0x01, [], [_EPH, 5, _ADDR], b"\0" * 300), _READER)
    assert offer.handshake == HandshakeOffer(_EPH, 5, ("192.0.2.1", 7400))
    accept = decode_datagram(_hs_envelope(0x81, _PONG, [_EPH, 2**32 - 1], b""), _READER)
    assert accept.handshake == HandshakeAccept(_EPH, 2**32 - 1)
    plain = decode_datagram(_hs_envelope(0x01, [], None, b"x"), _READER)
    assert plain.handshake is None and isinstance(plain.message, Ping)


@SETTINGS
@given(pad_to=st.integers(0, MAX_DATAGRAM), offer=st.booleans())
def test_padding_reaches_exactly_the_asked_size(pad_to: int, offer: bool) -> None:
    handshake = HandshakeOffer(_EPH, 5, ("192.0.2.1", 7400)) if offer else None
    plain = encode_message(FindNode(NodeId(3)), b"p" * 8, _READER, handshake=handshake)
    data = encode_message(
        FindNode(NodeId(3)), b"p" * 8, _READER, handshake=handshake, pad_to=pad_to
    )
    assert len(data) >= pad_to
    if pad_to > len(plain) + 2:
        assert len(data) == pad_to
    decoded = decode_datagram(data, Authenticator(Identity.generate(random.Random(5))))
    assert decoded.message == FindNode(NodeId(3)) and decoded.handshake == handshake


def test_oversize_and_undersize_session_datagrams_are_dropped_unanswered() -> None:
    net, a, b = _ESTABLISHED
    for data in (bytes([SESSION_MAGIC]) + bytes(MAX_DATAGRAM), bytes([SESSION_MAGIC, 1, 2])):
        before = b.stats["rx.dropped"]
        b.receive_datagram(data, net.address_of(a), net.now)
        assert b.stats["rx.dropped"] == before + 1
    assert b.stats["rx.dropped.oversize"] >= 1 and b.stats["rx.dropped.undersize"] >= 1
    assert b.datagrams_to_send() == []


def test_pending_offers_are_bounded_expire_and_a_dropped_one_completes_nothing() -> None:
    """Handshakes we started wait in a bounded table: past ``max_pending_offers`` the
    oldest is forgotten, an offer older than the idle timeout expires, and an accept for
    an offer no longer pending makes no session."""
    table = SessionTable(KadConfig(max_pending_offers=2))
    auth = Authenticator(Identity.generate(random.Random(1)))
    rng = random.Random(2)
    a, b, c = ("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)
    first = table.make_offer(a, auth, rng, 0.0)
    table.make_offer(b, auth, rng, 1.0)
    table.make_offer(c, auth, rng, 2.0)
    assert not table.offering(a) and table.offering(b) and table.offering(c)
    idle = table.idle_timeout
    table.expire(1.0 + idle + 0.5)  # b's offer is past the idle timeout, c's is not
    assert not table.offering(b) and table.offering(c)
    accept = HandshakeAccept(bytes(32), 7)
    peer = Identity.generate(random.Random(3))
    done = table.complete(
        first, accept, peer_id=peer.node_id, peer_key=peer.public_key, own_id=NodeId(1),
        observed=("10.9.0.1", 9), auth=auth, now=3.0,
    )  # fmt: skip
    assert done is None and len(table) == 0


def test_a_sessions_repr_names_its_peer_and_sid_and_no_key() -> None:
    """For logs and debugging: a session shows the peer's short id, its address and our
    session id, and nothing of its keys."""
    net, a, b = pair()
    mine, _ = establish(net, a, b)
    text = repr(mine)
    host, port = net.address_of(b)
    assert b.node_id.short() in text and f"{host}:{port}" in text
    assert f"{mine.local_sid:08x}" in text
    assert len(text) < 80  # no key material (32 bytes would be 64 hex digits)
