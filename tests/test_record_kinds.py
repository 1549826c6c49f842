"""Record kinds (issue #5): immutable and signed mutable records, their limits, the storer's
rules (signature, key hash, rollback, compare-and-swap) and quorum reads that correct lagging
replicas and ignore bad ones."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator

import msgpack
import pytest
from enginenet import EngineNet, Peer, addr, known_by, lone_engine, open_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nautilus_kad import Node
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import EncodeError, decode_datagram, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM, MAX_VALUE_SIZE, KadConfig
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.errors import (
    BadSignatureError,
    CasMismatchError,
    QueryError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
    ValueTooLargeError,
)
from nautilus_kad.core.events import GetDone, PutDone
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.limits import (
    MAX_SALT_BYTES,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MAX_TTL,
    SIGNED_VALUE_LIMIT,
    TOKEN_MAX_BYTES,
    VALUE_LIMITS,
    value_budget,
    worst_case_sizes,
)
from nautilus_kad.core.messages import (
    Address,
    Error,
    ErrorCode,
    FindValue,
    Message,
    Nodes,
    Store,
    Stored,
    Value,
    error_for,
)
from nautilus_kad.core.records import (
    SIGNED_RECORD_DOMAIN,
    Record,
    RecordKind,
    SignedRecord,
    check_replace,
    immutable_key,
    make_immutable,
    make_signed,
    signed_key,
    signing_input,
    validate_record,
)

RNG = random.Random(5)
OWNER = Identity.generate(RNG)
OTHER = Identity.generate(RNG)
CONFIG = KadConfig()
TXID = b"T" * 8
SENDER = Authenticator(Identity.generate(RNG))
RECEIVER = Authenticator(Identity.generate(RNG))
CRYPTO = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def signed(
    value: bytes = b"v", seq: int = 1, salt: bytes = b"name", who: Identity = OWNER
) -> Record:
    return make_signed(who, salt, value, seq, 3600)


# --- limits: one budget, every kind fits -------------------------------------------------------


def _widest(kind: RecordKind, size: int) -> Record:
    """A record of ``kind`` with every field at its widest encoding."""
    value = b"\xff" * size
    if kind is RecordKind.OPEN:
        return Record(NodeId(2**256 - 1), value, MAX_TIMESTAMP_MS, MAX_TTL)
    if kind is RecordKind.IMMUTABLE:
        return Record(NodeId(2**256 - 1), value, 0, MAX_TTL, RecordKind.IMMUTABLE)
    return Record(
        NodeId(2**256 - 1),
        value,
        0,
        MAX_TTL,
        RecordKind.SIGNED,
        owner=b"\xff" * 32,
        salt=b"\xff" * MAX_SALT_BYTES,
        seq=MAX_SEQ,
        signature=b"\xff" * 64,
    )


def _worst_messages(record: Record) -> list[Message]:
    token = b"\xaa" * TOKEN_MAX_BYTES
    return [
        Value(("2001:db8::ffff", 65535), token, record),
        Value(("203.0.113.9", 65535), token, record),
        Store(record, token, MAX_SEQ),
        Store(record, token),
    ]


def test_limits_are_what_the_design_promises() -> None:
    assert VALUE_LIMITS[RecordKind.OPEN] == MAX_VALUE_SIZE == 1000
    assert VALUE_LIMITS[RecordKind.IMMUTABLE] == 1000
    # Signed records pay for owner key, salt, seq and signature (and lose the timestamp).
    assert value_budget(RecordKind.SIGNED) == SIGNED_VALUE_LIMIT
    assert 800 < SIGNED_VALUE_LIMIT < 1000


@pytest.mark.parametrize("kind", list(RecordKind))
def test_max_size_store_and_value_of_every_kind_fit(kind: RecordKind) -> None:
    record = _widest(kind, VALUE_LIMITS[kind])
    sizes = []
    for message in _worst_messages(record):
        data = encode_message(message, TXID, SENDER, 255)
        assert len(data) <= MAX_DATAGRAM
        assert decode_datagram(data, RECEIVER).message == message
        sizes.append(len(data))
    # limits.py measures the same datagrams the codec builds (no drift between the two).
    assert max(sizes[0], sizes[2]) == max(worst_case_sizes(kind, VALUE_LIMITS[kind]))


@pytest.mark.parametrize("kind", list(RecordKind))
def test_budget_is_tight(kind: RecordKind) -> None:
    budget = value_budget(kind)
    assert max(worst_case_sizes(kind, budget)) <= MAX_DATAGRAM
    assert max(worst_case_sizes(kind, budget + 1)) > MAX_DATAGRAM


@pytest.mark.parametrize("kind", list(RecordKind))
def test_codec_refuses_values_over_the_limit(kind: RecordKind) -> None:
    record = _widest(kind, VALUE_LIMITS[kind] + 1)
    with pytest.raises(EncodeError):
        encode_message(Store(record, b""), TXID, SENDER)


def test_decoder_rejects_signed_value_over_the_limit() -> None:
    # A signed envelope (valid signature) whose record is one byte too long: rejected by the
    # schema check even though it would fit the datagram (short salt).
    fields = [2, b"\x01" * 32, b"x" * (SIGNED_VALUE_LIMIT + 1), 60, b"\x02" * 32, b"", 1, b"s" * 64]
    payload = msgpack.packb([1, 0x04, TXID, SENDER.identity.public_key, 0, [fields, b""]])
    data = payload + SENDER.sign(payload)
    assert len(data) <= MAX_DATAGRAM
    with pytest.raises(Exception) as info:
        decode_datagram(data, RECEIVER)
    assert getattr(info.value, "reason", None) == "schema"


record_kinds = st.sampled_from(list(RecordKind))


@CRYPTO
@given(
    kind=record_kinds,
    value=st.binary(max_size=SIGNED_VALUE_LIMIT),
    salt=st.binary(max_size=MAX_SALT_BYTES),
    seq=st.integers(0, MAX_SEQ),
    ttl=st.integers(1, MAX_TTL),
    cas=st.none() | st.integers(0, MAX_SEQ),
)
def test_every_kind_round_trips(
    kind: RecordKind, value: bytes, salt: bytes, seq: int, ttl: int, cas: int | None
) -> None:
    if kind is RecordKind.OPEN:
        record = Record(NodeId(7), value, 12345, ttl)
    elif kind is RecordKind.IMMUTABLE:
        record = make_immutable(value, ttl)
    else:
        record = make_signed(OWNER, salt, value, seq, ttl)
    for message in (Store(record, b"tok", cas), Value(("192.0.2.1", 1), b"t", record)):
        decoded = decode_datagram(encode_message(message, TXID, SENDER), RECEIVER).message
        assert decoded == message
    validate_record(record, CONFIG)


# --- validation ------------------------------------------------------------------------------


def test_signature_input_is_domain_separated_concatenation() -> None:
    data = signing_input(b"ab", 258, b"xyz")
    assert data == SIGNED_RECORD_DOMAIN + b"\x02ab" + (258).to_bytes(8, "big") + b"xyz"
    assert SIGNED_RECORD_DOMAIN == b"nautilus-kad/signed-record/v1\0"


@given(
    a=st.tuples(st.binary(max_size=8), st.integers(0, 2**16), st.binary(max_size=8)),
    b=st.tuples(st.binary(max_size=8), st.integers(0, 2**16), st.binary(max_size=8)),
)
def test_signature_input_is_unambiguous(
    a: tuple[bytes, int, bytes], b: tuple[bytes, int, bytes]
) -> None:
    # The length prefix keeps (salt, value) pairs apart: b"ab"+b"c" is not b"a"+b"bc".
    if a != b:
        assert signing_input(*a) != signing_input(*b)


def test_valid_signed_and_immutable_records_pass() -> None:
    validate_record(signed(), CONFIG)
    validate_record(make_immutable(b"content", 60), CONFIG)
    assert signed().key == signed_key(OWNER.public_key, b"name")
    assert signed().key == NodeId.from_bytes_exact(
        hashlib.sha256(OWNER.public_key + b"name").digest()
    )
    assert make_immutable(b"c", 1).key == immutable_key(b"c")


def test_forged_signature_is_rejected() -> None:
    good = signed()
    bad_sig = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    with pytest.raises(BadSignatureError):
        validate_record(dataclasses.replace(good, signature=bad_sig), CONFIG)
    # A changed value, seq or salt breaks the signature too.
    with pytest.raises(BadSignatureError):
        validate_record(dataclasses.replace(good, value=b"w"), CONFIG)
    with pytest.raises(BadSignatureError):
        validate_record(dataclasses.replace(good, seq=2), CONFIG)


def test_signature_by_another_key_is_rejected() -> None:
    # OTHER signs a record but claims OWNER's key (and OWNER's key hash): the owner check fails.
    forged = dataclasses.replace(signed(who=OTHER), owner=OWNER.public_key, key=signed().key)
    with pytest.raises(BadSignatureError):
        validate_record(forged, CONFIG)


def test_signature_over_msgpack_is_not_a_record_signature() -> None:
    good = signed(b"value", 3)
    over_msgpack = OWNER.sign(msgpack.packb([good.salt, good.seq, good.value]))
    without_domain = OWNER.sign(signing_input(good.salt, good.seq, good.value)[30:])
    for signature in (over_msgpack, without_domain):
        with pytest.raises(BadSignatureError):
            validate_record(dataclasses.replace(good, signature=signature), CONFIG)


def test_wrong_key_hash_is_rejected() -> None:
    with pytest.raises(ValidationError, match="SHA-256"):
        validate_record(dataclasses.replace(make_immutable(b"x", 60), key=NodeId(1)), CONFIG)
    with pytest.raises(ValidationError, match="SHA-256"):
        validate_record(dataclasses.replace(signed(), key=NodeId(1)), CONFIG)
    # A right key for another salt: the key must hash owner and *this* salt.
    with pytest.raises(ValidationError):
        validate_record(dataclasses.replace(signed(salt=b"a"), key=signed(salt=b"b").key), CONFIG)


def test_shape_rules() -> None:
    with pytest.raises(ValidationError):
        signing_input(b"s" * (MAX_SALT_BYTES + 1), 1, b"")
    with pytest.raises(ValueTooLargeError):
        validate_record(signed(b"x" * (SIGNED_VALUE_LIMIT + 1)), CONFIG)
    with pytest.raises(ValidationError):  # an immutable record has no timestamp
        validate_record(dataclasses.replace(make_immutable(b"x", 60), timestamp_ms=5), CONFIG)
    with pytest.raises(ValidationError):  # an open record has no owner
        validate_record(Record(NodeId(1), b"v", 1, 60, owner=OWNER.public_key), CONFIG)
    with pytest.raises(ValidationError):
        validate_record(dataclasses.replace(signed(), owner=b"short"), CONFIG)
    with pytest.raises(BadSignatureError):
        validate_record(dataclasses.replace(signed(), signature=b"short"), CONFIG)


# --- the storer's conflict rules ---------------------------------------------------------------


def test_higher_sequence_replaces_and_rollback_is_refused() -> None:
    assert check_replace(signed(seq=1), signed(seq=2), None) is True
    with pytest.raises(StaleSequenceError, match="older"):
        check_replace(signed(seq=2), signed(seq=1), None)


def test_equal_sequence_with_another_value_is_refused() -> None:
    with pytest.raises(StaleSequenceError, match="different value"):
        check_replace(signed(b"a", 3), signed(b"b", 3), None)
    with pytest.raises(StaleSequenceError, match="different value"):
        check_replace(signed(b"b", 3), signed(b"a", 3), None)
    assert check_replace(signed(b"a", 3), signed(b"a", 3), None) is False  # a refresh


def test_compare_and_swap() -> None:
    held = signed(seq=5)
    assert check_replace(held, signed(seq=6), 5) is True
    with pytest.raises(CasMismatchError):
        check_replace(held, signed(seq=6), 4)
    # A storer that is behind the writer's expectation missed a write: it accepts.
    assert check_replace(signed(seq=3), signed(seq=7), 6) is True
    assert check_replace(None, signed(seq=1), 0) is True
    with pytest.raises(ValidationError):  # must write past the expected sequence
        check_replace(held, signed(seq=5), 5)
    with pytest.raises(ValidationError):  # open records have no sequence number
        check_replace(None, Record(NodeId(1), b"v", 1, 60), 0)


def test_kinds_do_not_overwrite_authenticated_records() -> None:
    value = b"content"
    immutable = make_immutable(value, 60)
    # An open record under the same id (key_id(value) == SHA-256(value)) cannot shadow it ...
    open_record = Record(immutable.key, b"other", 2**40, 60)
    with pytest.raises(RecordConflictError):
        check_replace(immutable, open_record, None)
    with pytest.raises(RecordConflictError):
        check_replace(signed(), dataclasses.replace(open_record, key=signed().key), None)
    # ... while an authenticated record replaces an open one.
    assert check_replace(open_record, immutable, None) is True
    assert check_replace(immutable, make_immutable(value, 90), None) is False


def test_error_codes_map_to_distinct_exceptions() -> None:
    assert isinstance(error_for(ErrorCode.CAS_MISMATCH, "x"), CasMismatchError)
    assert isinstance(error_for(ErrorCode.STALE_SEQUENCE, "x"), StaleSequenceError)
    assert isinstance(error_for(ErrorCode.BAD_SIGNATURE, "x"), BadSignatureError)
    assert isinstance(error_for(ErrorCode.STALE_RECORD, "x"), RecordConflictError)
    assert isinstance(error_for(ErrorCode.BAD_TOKEN, "x"), QueryError)
    assert "compare-and-swap failed" in str(error_for(ErrorCode.CAS_MISMATCH, "seq 4 stored"))
    types = {type(error_for(code, "")) for code in ErrorCode}
    assert len(types) >= 6


# --- a storer on the wire ----------------------------------------------------------------------


class Client:
    """Speaks to one engine with hand-made datagrams (signed, client mode)."""

    def __init__(self, net: EngineNet, target: KadEngine) -> None:
        self.net = net
        self.target = target
        self.auth = Authenticator(Identity.generate(RNG))
        self.address: Address = ("10.0.9.9", 4242)

    def request(self, message: Message) -> Message:
        data = encode_message(message, RNG.randbytes(8), self.auth, FLAG_CLIENT)
        self.net.inject(data, self.address, self.net.address_of(self.target))
        answers = [d for d, dst in self.target.datagrams_to_send() if dst == self.address]
        assert len(answers) == 1
        return decode_datagram(answers[0], self.auth).message

    def token(self, key: NodeId) -> bytes:
        answer = self.request(FindValue(key))
        assert isinstance(answer, Nodes | Value)
        return answer.token

    def store(self, record: Record, cas: int | None = None) -> Message:
        return self.request(Store(record, self.token(record.key), cas))


@pytest.fixture
def storer() -> tuple[EngineNet, KadEngine, Client]:
    net = EngineNet(1)
    engine = net.engine(0)
    return net, engine, Client(net, engine)


def _code(answer: Message) -> ErrorCode:
    assert isinstance(answer, Error), answer
    return answer.code


def test_storer_rules_on_the_wire(storer: tuple[EngineNet, KadEngine, Client]) -> None:
    net, engine, client = storer
    assert isinstance(client.store(signed(b"one", 1)), Stored)
    forged = dataclasses.replace(signed(b"two", 2), value=b"evil")
    assert _code(client.store(forged)) is ErrorCode.BAD_SIGNATURE
    wrong_key = dataclasses.replace(make_immutable(b"x", 60), key=signed().key)
    assert _code(client.store(wrong_key)) is ErrorCode.INVALID_RECORD
    assert isinstance(client.store(signed(b"three", 3)), Stored)
    assert _code(client.store(signed(b"two", 2))) is ErrorCode.STALE_SEQUENCE  # rollback
    assert _code(client.store(signed(b"other", 3))) is ErrorCode.STALE_SEQUENCE
    assert isinstance(client.store(signed(b"three", 3)), Stored)  # same record: refresh
    assert _code(client.store(signed(b"four", 4), cas=2)) is ErrorCode.CAS_MISMATCH
    assert isinstance(client.store(signed(b"four", 4), cas=3), Stored)
    assert _code(client.store(make_immutable(b"i", 9), cas=3)) is ErrorCode.INVALID_RECORD
    held = engine.store.get(signed().key, net.now)
    assert held is not None and held.record.value == b"four" and held.record.seq == 4
    assert engine.stats["store.rejected.signature"] == 1
    assert engine.stats["store.rejected.cas"] == 1
    # The error text says what went wrong, for the client's exception message.
    answer = client.store(signed(b"x", 1))
    assert isinstance(answer, Error) and "older" in answer.message


def test_immutable_store_checks_the_hash(storer: tuple[EngineNet, KadEngine, Client]) -> None:
    _, engine, client = storer
    good = make_immutable(b"blob", 60)
    assert isinstance(client.store(good), Stored)
    assert isinstance(client.store(good), Stored)
    assert _code(client.store(dataclasses.replace(good, value=b"blub"))) is (
        ErrorCode.INVALID_RECORD
    )
    assert engine.stats["store.accepted"] == 1


# --- puts and gets through a network -----------------------------------------------------------


def _net(size: int = 12, seed: int = 11, **config: object) -> EngineNet:
    net = EngineNet(size, config=KadConfig(k=8).with_changes(**config), seed=seed)
    net.join_all()
    return net


def _put(net: EngineNet, engine: KadEngine, record: Record, cas: int | None = None) -> PutDone:
    event = net.wait_for(engine, engine.put(record, net.now, cas=cas))
    assert isinstance(event, PutDone)
    return event


def _get(net: EngineNet, engine: KadEngine, key: NodeId, kind: RecordKind | None) -> GetDone:
    event = net.wait_for(engine, engine.get(key, net.now, kind=kind))
    assert isinstance(event, GetDone)
    return event


def _holders(net: EngineNet, key: NodeId) -> list[KadEngine]:
    return [e for e in net.engines.values() if e.store.get(key, net.now) is not None]


def test_signed_put_and_quorum_get() -> None:
    net = _net()
    writer, reader = net.engine(3), net.engine(7)
    put = _put(net, writer, signed(b"hello", 1))
    assert put.acks >= 4 and not put.errors
    got = _get(net, reader, signed().key, RecordKind.SIGNED)
    assert got.record == signed(b"hello", 1)
    assert got.answers >= CONFIG.signed_get_quorum
    assert SignedRecord.from_record(got.record).name == b"name"


def test_put_reports_refusals_by_code() -> None:
    net = _net()
    writer = net.engine(2)
    _put(net, writer, signed(b"v5", 5))
    rollback = _put(net, writer, signed(b"v4", 4))
    assert rollback.acks == 0
    assert {code for code, _ in rollback.errors} == {ErrorCode.STALE_SEQUENCE}
    cas = _put(net, writer, signed(b"v7", 7), cas=4)
    assert cas.acks == 0
    assert {code for code, _ in cas.errors} == {ErrorCode.CAS_MISMATCH}
    ok = _put(net, writer, signed(b"v6", 6), cas=5)
    assert ok.acks >= 4 and not ok.errors


def test_a_replica_serving_an_old_sequence_is_corrected() -> None:
    net = _net(seed=12)
    writer, reader = net.engine(1), net.engine(5)
    _put(net, writer, signed(b"new", 2))
    holders = [e for e in _holders(net, signed().key) if e is not reader]
    stale = holders[:2]
    old = signed(b"old", 1)
    for engine in stale:  # as if they had missed the latest write
        engine.store.put(old, net.now, net.now + 3600)
    got = _get(net, reader, signed().key, RecordKind.SIGNED)
    assert got.record is not None and got.record.seq == 2
    net.deliver()
    asked = [e for e in stale if e.stats["rx.request.FIND_VALUE"]]
    assert asked, "the reader should have asked at least one stale replica"
    # Replicas that answered before the get returned are counted in its result; those that
    # answered after it are corrected all the same.
    assert got.repaired <= reader.stats["get.repaired"] == len(asked)
    for engine in asked:
        held = engine.store.get(signed().key, net.now)
        assert held is not None and held.record.seq == 2


def test_invalid_values_are_ignored_and_counted_against_the_peer() -> None:
    net = _net(seed=13)
    writer, reader = net.engine(2), net.engine(9)
    good = signed(b"good", 3)
    _put(net, writer, good)
    liars = [e for e in _holders(net, good.key) if e is not reader][:2]
    forged = dataclasses.replace(signed(b"evil", 9), signature=bytes(64))
    for liar in liars:  # bypass the storer's checks: a malicious node serves anything
        liar.store.put(forged, net.now, net.now + 3600)
    stores_before = [liar.stats["rx.request.STORE"] for liar in liars]
    got = _get(net, reader, good.key, RecordKind.SIGNED)
    net.deliver()
    assert got.record == good
    asked = [e for e in liars if e.stats["rx.request.FIND_VALUE"]]
    assert asked
    assert reader.stats["get.invalid_value"] == len(asked)
    assert reader.stats["peer.misbehaved"] == len(asked)
    for liar in asked:
        assert reader.strikes[liar.node_id] == 1
        entry = reader.table.get(liar.node_id)
        assert entry is None or entry.failures >= 1
    # The reader sent the liars nothing more (no cached copy, no "repair").
    assert [liar.stats["rx.request.STORE"] for liar in liars] == stores_before


def test_immutable_get_ignores_a_wrong_value() -> None:
    net = _net(seed=14)
    writer, reader = net.engine(4), net.engine(8)
    record = make_immutable(b"payload", 3600)
    put = _put(net, writer, record)
    assert put.acks >= 4
    for engine in _holders(net, record.key):
        if engine is not reader:
            engine.store.put(dataclasses.replace(record, value=b"forged"), net.now, net.now + 60)
            break
    got = _get(net, reader, record.key, RecordKind.IMMUTABLE)
    assert got.record == record or got.record is None
    got = _get(net, writer, record.key, RecordKind.IMMUTABLE)
    assert got.record == record  # the writer holds a copy itself


# --- the public API on real loopback sockets -------------------------------------------------


@contextlib.asynccontextmanager
async def _loopback(size: int) -> AsyncIterator[list[Node]]:
    config = KadConfig(k=8, request_timeout=1.0, max_soft_timeout=0.5)
    nodes = [await Node.start("127.0.0.1", 0, config=config)]
    try:
        for _ in range(size - 1):
            nodes.append(await Node.start("127.0.0.1", 0, [nodes[0].address], config=config))
        for node in nodes:
            await node.find_node(node.node_id)
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.integration
def test_node_signed_and_immutable_api() -> None:
    async def main() -> None:
        async with _loopback(6) as nodes:
            owner, reader = nodes[1], nodes[4]
            pub = owner.engine.identity.public_key
            key = await owner.put_signed(b"profile", b"v1")
            assert key == signed_key(pub, b"profile")
            first = await reader.get_signed(pub, b"profile")
            assert first is not None and (first.seq, first.value) == (1, b"v1")
            # seq left out: one more than the network holds.
            await owner.put_signed(b"profile", b"v2")
            second = await reader.get_signed(pub, b"profile")
            assert second is not None and (second.seq, second.value) == (2, b"v2")
            assert second.owner == pub and second.name == b"profile"
            # compare-and-swap on the sequence just read
            await owner.put_signed(b"profile", b"v3", cas=2)
            with pytest.raises(CasMismatchError, match="compare-and-swap"):
                await owner.put_signed(b"profile", b"v4", cas=2)
            with pytest.raises(CasMismatchError):  # the storers refuse it too
                await owner.put_signed(b"profile", b"v4", seq=9, cas=1)
            with pytest.raises(StaleSequenceError):  # rollback
                await owner.put_signed(b"profile", b"old", seq=2)
            latest = await reader.get_signed(pub, b"profile")
            assert latest is not None and (latest.seq, latest.value) == (3, b"v3")
            assert await reader.get_signed(pub, b"nothing") is None
            assert await reader.get_signed(nodes[2].engine.identity.public_key, b"profile") is None

            cid = await nodes[2].put_immutable(b"some content")
            assert cid == immutable_key(b"some content")
            assert await reader.get_immutable(cid) == b"some content"
            assert await reader.get_immutable(cid.to_bytes32()) == b"some content"
            assert await reader.get_immutable(immutable_key(b"absent")) is None
            with pytest.raises(ValueTooLargeError):
                await owner.put_signed(b"big", b"x" * (owner.blob_config.max_size + 1))
            with pytest.raises(ValidationError):
                await owner.put_signed(b"n" * 65, b"x")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_get_for_one_kind_ignores_a_value_of_another_kind() -> None:
    """A get restricted to IMMUTABLE records is answered with a (valid) OPEN record under
    that key: counted as the wrong kind, not returned, and not held against the peer (it
    may hold an honest record of another kind under a colliding key)."""
    engine = lone_engine(31, KadConfig(sessions=False))
    peer = Peer(32)
    known_by(engine, peer)
    record = open_record(b"an open value", b"v")
    qid = engine.get(record.key, 0.0, kind=RecordKind.IMMUTABLE)
    reply = lambda env: Value(addr(engine), b"t" * 8, record)  # noqa: E731
    assert peer.answer(engine, reply, 0.01) == 1
    done = [e for e in iter(engine.next_event, None) if isinstance(e, GetDone)]
    assert [(d.query_id, d.record) for d in done] == [(qid, None)]
    assert engine.stats["get.wrong_kind"] == 1
    assert engine.stats["get.invalid_value"] == 0
    assert peer.identity.node_id in engine.table
