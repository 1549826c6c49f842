"""Requests and their answers (core/rpc.py): answers matched by txid, address and node id,
answers of the wrong kind or with invalid values dropped, and the re-send past a soft timeout."""

from __future__ import annotations

import pytest
from enginenet import (
    EngineNet,
    Peer,
    addr,
    known_by,
    lone_engine,
    open_record,
)

from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.engine import TOKEN_BYTES
from nautilus_kad.core.events import (
    GetDone,
    LookupDone,
    PeerAdded,
    PingDone,
    QueryFailed,
)
from nautilus_kad.core.ids import NodeId, key_id
from nautilus_kad.core.messages import (
    AnyRequest,
    Connect,
    ConnectReply,
    Contact,
    Dialback,
    DialbackReply,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Forward,
    ForwardReply,
    Message,
    Nodes,
    Ping,
    Pong,
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    ProbeStatus,
    Register,
    RegisterReply,
    Store,
    Stored,
    TraversalStatus,
    Value,
)
from nautilus_kad.core.records import Record
from nautilus_kad.core.rpc import answers


def test_response_checks_txid_address_and_replay() -> None:
    net = EngineNet(seed=9, now=0.0)
    a, b = net.add(), net.add()
    qid = a.ping(addr(b), net.now)
    ((ping, _),) = a.datagrams_to_send()
    b.receive_datagram(ping, addr(a), net.now)
    pong = next(
        data
        for data, dst in b.datagrams_to_send()
        if isinstance(decode_datagram(data, a.auth).message, Pong)
    )
    txid = decode_datagram(pong, a.auth).txid
    wrong_txid = bytes([txid[0] ^ 1]) + txid[1:]
    forged = encode_message(Pong(addr(a)), wrong_txid, b.auth)
    a.receive_datagram(forged, addr(b), net.now)
    assert a.stats["rx.dropped.unsolicited"] == 1
    a.receive_datagram(pong, (addr(b)[0], addr(b)[1] + 1), net.now)
    assert a.stats["rx.dropped.unsolicited"] == 2
    a.receive_datagram(pong, ("10.0.0.99", addr(b)[1]), net.now)
    assert a.stats["rx.dropped.unsolicited"] == 3
    assert a.next_event() is None
    assert b.node_id not in a.table
    # The genuine answer from the right address is still accepted ...
    a.receive_datagram(pong, addr(b), net.now)
    event = a.next_event()
    assert isinstance(event, PeerAdded)
    event = a.next_event()
    assert isinstance(event, PingDone)
    assert event.query_id == qid
    # ... once.
    a.receive_datagram(pong, addr(b), net.now)
    assert a.stats["rx.dropped.unsolicited"] == 4
    assert a.stats["rx.dropped"] == 4
    assert a.next_event() is None


def test_response_from_unexpected_node_id_is_dropped() -> None:
    net = EngineNet(seed=10, now=0.0)
    a, b = net.add(), net.add()
    net.result(a, a.ping(addr(b), net.now))
    qid = a.find_node(NodeId(777), net.now)
    ((request, dst),) = a.datagrams_to_send()
    assert dst == addr(b)
    sent = decode_datagram(request, b.auth)
    assert isinstance(sent.message, FindNode)
    impostor = Peer(11)
    forged = encode_message(
        Nodes(addr(a), b"", (Contact(impostor.identity.node_id, "10.0.9.9", 1),)),
        sent.txid,
        impostor.auth,
    )
    a.receive_datagram(forged, addr(b), net.now)
    assert a.stats["rx.dropped.unsolicited"] == 1
    assert impostor.identity.node_id not in a.table
    assert a.next_event() is None
    # The real answer still completes the lookup.
    b.receive_datagram(request, addr(a), net.now)
    net.deliver()
    done = net.result(a, qid)
    assert isinstance(done, LookupDone)
    assert [c.node_id for c in done.contacts] == [b.node_id]


def test_response_of_the_wrong_kind_is_dropped() -> None:
    net = EngineNet(seed=12, now=0.0)
    a, b = net.add(), net.add()
    qid = a.ping(addr(b), net.now)
    ((request, _),) = a.datagrams_to_send()
    txid = decode_datagram(request, b.auth).txid
    wrong = encode_message(Stored(addr(a)), txid, b.auth)
    a.receive_datagram(wrong, addr(b), net.now)
    assert a.stats["rx.dropped.mismatch"] == 1
    assert a.next_event() is None
    assert not net.pending_result(a, qid)


@pytest.mark.parametrize("bad", ["wrong key", "too large"])
def test_invalid_value_answer_is_not_accepted(bad: str) -> None:
    engine = lone_engine(60)
    peer = Peer(61)
    known_by(engine, peer)
    key = key_id(b"wanted")
    if bad == "wrong key":
        record = open_record(b"something else", b"forged")
    else:
        # Over the inline limit no codec encodes or decodes it (test_record_kinds.py);
        # a limit lowered by the reader's config is what validation catches here.
        engine.config = engine.config.with_changes(max_value_size=100)
        record = Record(key, b"x" * 101, 1, 60)

    def reply(env: Envelope) -> Message:
        assert isinstance(env.message, FindValue)
        assert env.message.key == key
        return Value(addr(engine), b"t" * TOKEN_BYTES, record)

    qid = engine.get(key, 0.0)
    assert peer.answer(engine, reply, 0.0) == 1
    done = engine.next_event()
    assert isinstance(done, GetDone)
    assert done.query_id == qid
    assert done.record is None
    assert engine.stats["get.invalid_value"] == 1
    assert engine.store.get(key, 0.0) is None


def test_error_answer_fails_the_peer_for_the_lookup() -> None:
    engine = lone_engine(62)
    peer = Peer(63)
    known_by(engine, peer)
    qid = engine.find_node(NodeId(5), 0.0)
    served = peer.answer(
        engine, lambda env: Error(addr(engine), ErrorCode.SERVER_ERROR, "busy"), 0.0
    )
    assert served == 1
    done = engine.next_event()
    # The only peer refused: the lookup learned nothing and says so.
    assert isinstance(done, QueryFailed)
    assert done.query_id == qid


def test_a_lookup_request_past_its_soft_timeout_is_sent_once_more() -> None:
    engine = lone_engine(seed=21)
    peer = Peer(22, address=("10.2.0.9", 5000))
    engine.ping(peer.address, 0.0)
    assert peer.answer(engine, lambda env: Pong(engine.address), 0.0) == 1
    qid = engine.find_node(NodeId(777), 0.1)
    ((first, dst),) = engine.datagrams_to_send()
    assert dst == peer.address
    engine.handle_timer(1.5)  # past the soft timeout, before the hard one
    ((copy, dst),) = engine.datagrams_to_send()
    assert dst == peer.address
    original, again = decode_datagram(first, peer.auth), decode_datagram(copy, peer.auth)
    assert again.txid == original.txid and again.message == original.message
    assert copy[-64:] != first[-64:]  # a fresh signature: the peer's replay filter lets it in
    assert engine.stats["tx.retransmits"] == 1
    engine.handle_timer(1.9)
    assert engine.datagrams_to_send() == []  # once only
    # The answer to either copy completes the lookup with the peer in it.
    answer = encode_message(Nodes(engine.address, b"", ()), again.txid, peer.auth)
    engine.receive_datagram(answer, peer.address, 1.95)
    done = [e for e in iter(engine.next_event, None) if isinstance(e, LookupDone)]
    assert [e.query_id for e in done] == [qid]
    assert [c.node_id for c in done[0].contacts] == [peer.identity.node_id]


def test_each_request_accepts_only_its_own_answers_and_error() -> None:
    """The answer table of the rpc layer, row by row: what a request of each kind may be
    answered with (anything else is dropped as a mismatch), the NAT and traversal
    requests included; ERROR answers every request."""
    seen = ("192.0.2.1", 4000)
    record = Record(key_id(b"k"), b"v", 1, 60)
    answers_of: dict[type, Message] = {
        Pong: Pong(seen),
        Nodes: Nodes(seen, b"", ()),
        Value: Value(seen, b"", record),
        Stored: Stored(seen),
        DialbackReply: DialbackReply(seen, ProbeStatus.ARRANGED),
        ProbeRelayReply: ProbeRelayReply(seen, ProbeStatus.ARRANGED),
        RegisterReply: RegisterReply(seen, TraversalStatus.OK, 60),
        ConnectReply: ConnectReply(seen, TraversalStatus.OK, b"", None, 0, TraversalStatus.OK),
        ForwardReply: ForwardReply(seen, TraversalStatus.OK, b""),
    }
    table: list[tuple[AnyRequest, set[type]]] = [
        (Ping(), {Pong}),
        (FindNode(NodeId(1)), {Nodes}),
        (FindValue(NodeId(1)), {Nodes, Value}),
        (Store(record, b""), {Stored}),
        (Dialback(bytes(8)), {DialbackReply}),
        (ProbeRelay(bytes(8), seen), {ProbeRelayReply}),
        (Register(), {RegisterReply}),
        (Connect(NodeId(1), b"", False), {ConnectReply}),
        (Forward(b"", seen, 0), {ForwardReply}),
    ]
    for request, legal in table:
        assert answers(request, Error(seen, ErrorCode.SERVER_ERROR, "no")), request
        for kind, answer in answers_of.items():
            assert answers(request, answer) is (kind in legal), (request, kind)
    # A message that answers nothing (a PROBE is a notice) is no request's answer, and a
    # request kind the table does not know has no legal answer but ERROR.
    assert not answers(Ping(), Probe(bytes(8)))
    assert not answers(Probe(bytes(8)), Pong(seen))


def test_a_txid_drawn_twice_is_drawn_again() -> None:
    """Two requests in flight never share a txid: when the random source repeats the txid of
    a pending request (forced here: 8 random bytes collide about never), the next draw is
    used, and each answer ends its own query."""
    net = EngineNet(seed=9, now=0.0)
    a, b, c = net.add(), net.add(), net.add()
    rng = a.rng
    draws: list[bytes] = []
    forced: list[bytes] = []
    real = rng.randbytes

    def randbytes(n: int) -> bytes:
        value = forced.pop(0) if forced and n == 8 else real(n)
        if n == 8:
            draws.append(value)
        return value

    rng.randbytes = randbytes  # type: ignore[method-assign]
    first = a.ping(addr(b), net.now)
    ((request_b, _),) = a.datagrams_to_send()
    txid_b = decode_datagram(request_b, b.auth).txid
    forced.append(txid_b)  # the next draw repeats it
    count = len(draws)
    second = a.ping(addr(c), net.now)
    ((request_c, _),) = a.datagrams_to_send()
    txid_c = decode_datagram(request_c, c.auth).txid
    assert draws[count] == txid_b and txid_c == draws[count + 1] != txid_b
    del rng.randbytes
    b.receive_datagram(request_b, addr(a), net.now)
    c.receive_datagram(request_c, addr(a), net.now)
    for peer in (c, b):
        for data, _ in peer.datagrams_to_send():
            a.receive_datagram(data, addr(peer), net.now)
    done = {e.query_id: e for e in iter(a.next_event, None) if isinstance(e, PingDone)}
    assert set(done) == {first, second}
    assert a.stats["rx.dropped"] == 0
