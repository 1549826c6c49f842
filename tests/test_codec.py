"""The wire format (core/codec.py): round trips, size budget, strict and total decoding."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nautilus_kad.core import codec, fields
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import (
    MAX_CONTACTS,
    PROTOCOL_VERSION,
    TOKEN_MAX_BYTES,
    EncodeError,
    decode_datagram,
    encode_message,
)
from nautilus_kad.core.config import MAX_DATAGRAM, KadConfig
from nautilus_kad.core.engine import FLAG_CLIENT, TOKEN_BYTES
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.fields import ContactMemo, pack_ip
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.limits import MAX_SALT_BYTES
from nautilus_kad.core.messages import (
    Contact,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
)
from nautilus_kad.core.records import Record
from nautilus_kad.core.session import HandshakeAccept

_RNG = random.Random(20240601)
SIGNERS = [Identity.generate(_RNG) for _ in range(3)]
SIGNER_AUTHS = [Authenticator(identity) for identity in SIGNERS]
RECEIVER = Authenticator(Identity.generate(_RNG))
TXID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
MAX_VALUE = KadConfig().max_value_size
MAX_TS = 2**63 - 1
MAX_TTL = 2**32 - 1

CRYPTO = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# --- strategies --------------------------------------------------------------------------

node_ids = st.integers(min_value=0, max_value=2**256 - 1).map(NodeId)
ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(str)
hosts = st.one_of(ipv4_hosts, ipv6_hosts)
ports = st.integers(min_value=1, max_value=65535)
addresses = st.tuples(hosts, ports)
tokens = st.binary(max_size=TOKEN_MAX_BYTES)
txids = st.binary(min_size=8, max_size=8)
contacts = st.builds(Contact, node_ids, hosts, ports)
records = st.builds(
    Record,
    key=node_ids,
    value=st.binary(max_size=300),
    timestamp_ms=st.integers(min_value=0, max_value=MAX_TS),
    ttl=st.integers(min_value=1, max_value=MAX_TTL),
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.just(Ping()),
    st.builds(FindNode, node_ids),
    st.builds(FindValue, node_ids),
    st.builds(Store, records, tokens),
    st.builds(Pong, addresses),
    st.builds(Nodes, addresses, tokens, st.lists(contacts, max_size=20).map(tuple)),
    st.builds(Value, addresses, tokens, records),
    st.builds(Stored, addresses),
    st.builds(Error, addresses, st.sampled_from(list(ErrorCode)), st.text(max_size=128)),
)
signer_indices = st.integers(min_value=0, max_value=len(SIGNERS) - 1)


def _sha256_id(public_key: bytes) -> NodeId:
    return NodeId(int.from_bytes(hashlib.sha256(public_key).digest(), "big"))


def _forge(fields: Any, signer: Identity = SIGNERS[0], extra: bytes = b"") -> bytes:
    """A datagram with a valid signature over whatever (possibly hostile) fields we pack."""
    payload = bytes(msgpack.packb(fields, use_bin_type=True)) + extra
    return payload + signer.sign(payload)


def _envelope(msg_type: Any, body: Any, signer: Identity = SIGNERS[0], **over: Any) -> list[Any]:
    fields: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "type": msg_type,
        "txid": TXID,
        "key": signer.public_key,
        "flags": 0,
        "body": body,
    }
    fields.update(over)
    return list(fields.values())


IP4 = bytes([192, 0, 2, 1])
ID32 = b"\x11" * 32


def _record_fields(**over: Any) -> list[Any]:
    fields: dict[str, Any] = {
        "kind": 0,
        "key": ID32,
        "value": b"hello",
        "ts": 1_700_000_000_000,
        "ttl": 3600,
    }
    fields.update(over)
    return list(fields.values())


def _decode_reason(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_datagram(data, RECEIVER)
    return info.value.reason


# --- round trips -------------------------------------------------------------------------


@CRYPTO
@given(messages, txids, st.integers(min_value=0, max_value=255), signer_indices)
def test_round_trip_every_message(message: Message, txid: bytes, flags: int, who: int) -> None:
    signer = SIGNERS[who]
    data = encode_message(message, txid, SIGNER_AUTHS[who], flags)
    assert len(data) <= MAX_DATAGRAM
    env = decode_datagram(data, RECEIVER)
    assert env.txid == txid
    assert env.flags == flags
    assert env.sender_key == signer.public_key
    assert env.sender_id == _sha256_id(signer.public_key) == signer.node_id
    assert type(env.message) is type(message)
    if isinstance(message, Nodes):
        assert isinstance(env.message, Nodes)
        got = env.message.contacts
        # Only IPv6-heavy answers can need trimming; what is kept is a prefix.
        assert got == message.contacts[: len(got)]
        assert env.message.observed == message.observed
        assert env.message.token == message.token
        if len(got) < len(message.contacts):
            assert sum(":" in c.host for c in message.contacts) > 0
        if all(":" not in c.host for c in message.contacts):
            assert env.message == message
    else:
        assert env.message == message


def test_round_trip_fixed_examples() -> None:
    record = Record(NodeId(12345), b"v", 1, 60)
    examples: list[Message] = [
        Ping(),
        FindNode(NodeId(0)),
        FindValue(NodeId(2**256 - 1)),
        Store(record, b""),
        Pong(("127.0.0.1", 1)),
        Nodes(("::1", 65535), b"t" * 8, ()),
        Nodes(("10.0.0.1", 4000), b"", (Contact(NodeId(1), "10.0.0.2", 4001),)),
        Value(("2001:db8::1", 443), b"x", record),
        Stored(("8.8.8.8", 53)),
        Error(("1.1.1.1", 7), ErrorCode.BAD_TOKEN, "nope"),
    ]
    for message in examples:
        env = decode_datagram(encode_message(message, TXID, SIGNER_AUTHS[1]), RECEIVER)
        assert env.message == message
        assert env.message.TYPE == message.TYPE
        assert env.sender_id == SIGNERS[1].node_id


def test_encode_rejects_bad_txid() -> None:
    for txid in (b"", b"1234567", b"123456789"):
        with pytest.raises(EncodeError):
            encode_message(Ping(), txid, SIGNER_AUTHS[0])


# --- the size budget ---------------------------------------------------------------------


def _max_record(value_size: int = MAX_VALUE) -> Record:
    # Largest encodings of every field: 9-byte timestamp, 5-byte ttl.
    return Record(NodeId(2**256 - 1), b"\xff" * value_size, MAX_TS, MAX_TTL)


@pytest.mark.parametrize("token_size", [0, TOKEN_BYTES, TOKEN_MAX_BYTES])
def test_store_with_max_value_and_token_fits(token_size: int) -> None:
    message = Store(_max_record(), b"\xaa" * token_size)
    data = encode_message(message, TXID, SIGNER_AUTHS[0], FLAG_CLIENT)
    assert len(data) <= MAX_DATAGRAM
    assert decode_datagram(data, RECEIVER).message == message


def test_store_larger_than_a_datagram_is_refused_by_the_encoder() -> None:
    # Records are validated before they are sent (ValueTooLargeError); the encoder is the
    # last line: it never emits a datagram over the limit.
    with pytest.raises(EncodeError):
        encode_message(
            Store(_max_record(MAX_DATAGRAM), b"\xaa" * TOKEN_MAX_BYTES), TXID, SIGNER_AUTHS[0]
        )


@pytest.mark.parametrize("observed", [("203.0.113.9", 65535), ("2001:db8::ffff", 65535)])
def test_value_with_max_value_and_engine_token_fits(observed: tuple[str, int]) -> None:
    # The engine issues TOKEN_BYTES-long tokens: its VALUE answers must always fit.
    message = Value(observed, b"\xaa" * TOKEN_BYTES, _max_record())
    data = encode_message(message, TXID, SIGNER_AUTHS[0], FLAG_CLIENT)
    assert len(data) <= MAX_DATAGRAM
    assert decode_datagram(data, RECEIVER).message == message


@pytest.mark.parametrize("observed", [("203.0.113.9", 65535), ("2001:db8::ffff", 65535)])
def test_value_with_max_value_and_max_token_fits(observed: tuple[str, int]) -> None:
    # Fixed by deriving every limit from the datagram budget in core/limits.py: tokens are at
    # most TOKEN_MAX_BYTES (8, what the engine issues), so a maximal VALUE always fits.
    message = Value(observed, b"\xaa" * TOKEN_MAX_BYTES, _max_record())
    data = encode_message(message, TXID, SIGNER_AUTHS[0])
    assert len(data) <= MAX_DATAGRAM
    assert decode_datagram(data, RECEIVER).message == message


def test_nodes_with_twenty_ipv6_contacts_is_trimmed_and_decodes() -> None:
    rng = random.Random(7)
    full = tuple(
        Contact(
            NodeId.random(rng),
            str(ipaddress.IPv6Address(rng.getrandbits(128) | (1 << 127))),
            rng.randint(1024, 65535),
        )
        for _ in range(20)
    )
    observed = ("2001:db8::1", 65535)
    message = Nodes(observed, b"\x01" * TOKEN_MAX_BYTES, full)
    data = encode_message(message, TXID, SIGNER_AUTHS[0])
    assert len(data) <= MAX_DATAGRAM
    got = decode_datagram(data, RECEIVER).message
    assert isinstance(got, Nodes)
    n = len(got.contacts)
    assert 0 < n < 20
    assert got.contacts == full[:n]  # trimmed from the far end
    assert got.observed == observed
    # The trim is minimal: one more contact would not have fitted.
    again = decode_datagram(
        encode_message(Nodes(observed, message.token, full[: n + 1]), TXID, SIGNER_AUTHS[0]),
        RECEIVER,
    ).message
    assert isinstance(again, Nodes)
    assert len(again.contacts) == n


def test_nodes_with_twenty_ipv4_contacts_is_not_trimmed() -> None:
    rng = random.Random(8)
    full = tuple(
        Contact(NodeId.random(rng), str(ipaddress.IPv4Address(rng.getrandbits(32))), 65535)
        for _ in range(20)
    )
    message = Nodes(("198.51.100.7", 65535), b"\x01" * TOKEN_MAX_BYTES, full)
    data = encode_message(message, TXID, SIGNER_AUTHS[0])
    assert decode_datagram(data, RECEIVER).message == message


def test_error_text_is_cut_to_fit() -> None:
    data = encode_message(
        Error(("1.2.3.4", 5), ErrorCode.SERVER_ERROR, "é" * 500), TXID, SIGNER_AUTHS[0]
    )
    got = decode_datagram(data, RECEIVER).message
    assert isinstance(got, Error)
    assert got.message == "é" * 128


# --- decoding never raises anything but DecodeError --------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1500))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_datagram(data, RECEIVER)


def _valid_datagrams() -> list[bytes]:
    rng = random.Random(3)
    record = Record(NodeId.random(rng), b"some value bytes", 1_700_000_000_000, 3600)
    many = tuple(Contact(NodeId.random(rng), f"10.0.{i}.1", 4000 + i) for i in range(8))
    samples: list[Message] = [
        Ping(),
        FindNode(NodeId.random(rng)),
        FindValue(NodeId.random(rng)),
        Store(record, b"\x05" * 8),
        Pong(("192.0.2.1", 4242)),
        Nodes(("2001:db8::5", 4242), b"\x06" * 8, many),
        Value(("192.0.2.1", 4242), b"\x07" * 8, record),
        Stored(("192.0.2.1", 4242)),
        Error(("192.0.2.1", 4242), ErrorCode.STALE_RECORD, "stale"),
    ]
    return [encode_message(m, TXID, SIGNER_AUTHS[2]) for m in samples]


VALID = _valid_datagrams()


def test_valid_samples_decode() -> None:
    # Control for the mutation test: the unmutated datagrams are fine.
    for data in VALID:
        assert decode_datagram(data, RECEIVER).sender_id == SIGNERS[2].node_id


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 2000), st.just(0)),
    st.tuples(st.just("truncate"), st.integers(0, 2000), st.just(0)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        if op == "flip" and buf:
            buf[pos % len(buf)] ^= arg
        elif op == "insert":
            buf.insert(pos % (len(buf) + 1), arg)
        elif op == "delete" and buf:
            del buf[pos % len(buf)]
        elif op == "truncate":
            del buf[pos % (len(buf) + 1) :]
    return bytes(buf)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(range(len(VALID))), st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_datagrams_only_raise_decode_error(
    which: int, ops: list[tuple[str, int, int]]
) -> None:
    original = VALID[which]
    mutated = _mutate(original, ops)
    assume(mutated != original)
    with pytest.raises(DecodeError):
        decode_datagram(mutated, RECEIVER)


@pytest.mark.parametrize("which", range(len(VALID)))
def test_every_single_byte_flip_is_rejected(which: int) -> None:
    data = VALID[which]
    for pos in range(0, len(data), 7):
        mutated = bytearray(data)
        mutated[pos] ^= 0x40
        with pytest.raises(DecodeError):
            decode_datagram(bytes(mutated), RECEIVER)


# --- authentication ----------------------------------------------------------------------


def test_tampered_payload_with_original_signature() -> None:
    data = encode_message(FindNode(NodeId(5)), TXID, SIGNER_AUTHS[0])
    payload, signature = data[:-64], data[-64:]
    i = payload.index(TXID)
    tampered = payload[:i] + b"\xee" + payload[i + 1 :]
    assert _decode_reason(tampered + signature) == "signature"
    # The verifier caches keys, never verdicts: a known sender's forgery still fails.
    decode_datagram(data, RECEIVER)
    assert _decode_reason(tampered + signature) == "signature"


def test_signature_by_another_key_is_rejected() -> None:
    fields = _envelope(MessageType.PING, [], signer=SIGNERS[0])
    payload = msgpack.packb(fields, use_bin_type=True)
    assert _decode_reason(payload + SIGNERS[1].sign(payload)) == "signature"
    assert decode_datagram(payload + SIGNERS[0].sign(payload), RECEIVER).message == Ping()


def test_invalid_public_key_is_rejected() -> None:
    fields = _envelope(MessageType.PING, [], key=b"\x00" * 31 + b"\x80")
    assert _decode_reason(_forge(fields)) == "signature"


def test_authenticator_cache_is_bounded() -> None:
    auth = Authenticator(SIGNERS[0], cache_size=2)
    for who in range(3):
        data = encode_message(Ping(), TXID, SIGNER_AUTHS[who])
        assert decode_datagram(data, auth).sender_id == SIGNERS[who].node_id
    assert len(auth._cache) == 2


# --- strict schema: well-signed but malformed envelopes ----------------------------------


PONG_BODY = [[IP4, 4000]]


def test_forged_control_decodes() -> None:
    # Controls: the forging helper builds envelopes the decoder accepts.
    assert decode_datagram(_forge(_envelope(MessageType.PING, [])), RECEIVER).message == Ping()
    env = decode_datagram(_forge(_envelope(MessageType.PONG, PONG_BODY)), RECEIVER)
    assert env.message == Pong(("192.0.2.1", 4000))
    env = decode_datagram(
        _forge(_envelope(MessageType.STORE, [_record_fields(), b"tok"])), RECEIVER
    )
    assert isinstance(env.message, Store)
    contact = [ID32, IP4, 1]
    env = decode_datagram(
        _forge(_envelope(MessageType.NODES, [[IP4, 1], b"", [contact] * 20])), RECEIVER
    )
    assert isinstance(env.message, Nodes)
    assert len(env.message.contacts) == 20


BAD_ENVELOPES: list[tuple[str, list[Any], str]] = [
    # bool where an int is expected
    ("bool version", _envelope(MessageType.PING, [], version=True), "version"),
    ("bool type", _envelope(True, []), "type"),
    ("bool flags", _envelope(MessageType.PING, [], flags=False), "schema"),
    ("bool port", _envelope(MessageType.PONG, [[IP4, True]]), "schema"),
    (
        "bool ttl",
        _envelope(MessageType.STORE, [_record_fields(ttl=True), b""]),
        "schema",
    ),
    (
        "bool timestamp",
        _envelope(MessageType.STORE, [_record_fields(ts=False), b""]),
        "schema",
    ),
    ("bool kind", _envelope(MessageType.STORE, [_record_fields(kind=False), b""]), "schema"),
    ("bool error code", _envelope(MessageType.ERROR, [[IP4, 1], True, "x"]), "schema"),
    # str where bytes are expected
    ("str txid", _envelope(MessageType.PING, [], txid="abcdefgh"), "schema"),
    ("str key", _envelope(MessageType.PING, [], key="k" * 32), "schema"),
    ("str target", _envelope(MessageType.FIND_NODE, ["t" * 32]), "schema"),
    ("str host", _envelope(MessageType.PONG, [["192.0.2.1", 4000]]), "schema"),
    ("str token", _envelope(MessageType.STORE, [_record_fields(), "tok"]), "schema"),
    ("str value", _envelope(MessageType.STORE, [_record_fields(value="v"), b""]), "schema"),
    ("bytes error text", _envelope(MessageType.ERROR, [[IP4, 1], 1, b"x"]), "schema"),
    # lengths
    ("short txid", _envelope(MessageType.PING, [], txid=b"1234567"), "schema"),
    ("long txid", _envelope(MessageType.PING, [], txid=b"123456789"), "schema"),
    ("short key", _envelope(MessageType.PING, [], key=b"k" * 31), "schema"),
    ("short target", _envelope(MessageType.FIND_NODE, [b"t" * 31]), "schema"),
    (
        "long record key",
        _envelope(MessageType.STORE, [_record_fields(key=b"k" * 33), b""]),
        "schema",
    ),
    ("long token", _envelope(MessageType.STORE, [_record_fields(), b"t" * 33]), "schema"),
    ("5-byte ip", _envelope(MessageType.PONG, [[b"\x01" * 5, 4000]]), "schema"),
    ("long error text", _envelope(MessageType.ERROR, [[IP4, 1], 1, "x" * 129]), "schema"),
    # versions and types
    ("version 2", _envelope(MessageType.PING, [], version=2), "version"),
    ("version 0", _envelope(MessageType.PING, [], version=0), "version"),
    ("version str", _envelope(MessageType.PING, [], version="1"), "version"),
    ("unknown type 0x0B", _envelope(0x0B, []), "type"),
    ("unknown type 0x8B", _envelope(0x8B, []), "type"),
    ("unknown type 0", _envelope(0, []), "type"),
    ("str type", _envelope("PING", []), "type"),
    # ranges
    ("port 0", _envelope(MessageType.PONG, [[IP4, 0]]), "schema"),
    ("port 65536", _envelope(MessageType.PONG, [[IP4, 65536]]), "schema"),
    ("port -1", _envelope(MessageType.PONG, [[IP4, -1]]), "schema"),
    (
        "contact port 0",
        _envelope(MessageType.NODES, [[IP4, 1], b"", [[ID32, IP4, 0]]]),
        "schema",
    ),
    ("flags 256", _envelope(MessageType.PING, [], flags=256), "schema"),
    ("flags -1", _envelope(MessageType.PING, [], flags=-1), "schema"),
    ("ttl 0", _envelope(MessageType.STORE, [_record_fields(ttl=0), b""]), "schema"),
    ("ttl 2**32", _envelope(MessageType.STORE, [_record_fields(ttl=2**32), b""]), "schema"),
    ("negative timestamp", _envelope(MessageType.STORE, [_record_fields(ts=-1), b""]), "schema"),
    ("record kind 7", _envelope(MessageType.STORE, [_record_fields(kind=7), b""]), "schema"),
    ("error code 99", _envelope(MessageType.ERROR, [[IP4, 1], 99, "x"]), "schema"),
    # shapes
    ("ping with body", _envelope(MessageType.PING, [1]), "schema"),
    ("body not a list", _envelope(MessageType.PING, b""), "schema"),
    ("record of 4", _envelope(MessageType.STORE, [_record_fields()[:4], b""]), "schema"),
    ("contacts not a list", _envelope(MessageType.NODES, [[IP4, 1], b"", b""]), "schema"),
    ("contact of 2", _envelope(MessageType.NODES, [[IP4, 1], b"", [[ID32, IP4]]]), "schema"),
    ("32 bogus contacts", _envelope(MessageType.NODES, [[IP4, 1], b"", [0] * 32]), "schema"),
    ("33 contacts", _envelope(MessageType.NODES, [[IP4, 1], b"", [0] * 33]), "msgpack"),
    ("5 fields", _envelope(MessageType.PING, [])[:5], "schema"),
    ("7 fields", [*_envelope(MessageType.PING, []), 0], "schema"),
]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [pytest.param(f, r, id=name) for name, f, r in BAD_ENVELOPES],
)
def test_malformed_but_signed_envelope(fields: list[Any], reason: str) -> None:
    assert _decode_reason(_forge(fields)) == reason


def test_contact_list_bound_is_max_contacts() -> None:
    assert MAX_CONTACTS == 32
    contact = [ID32, IP4, 1]
    # 32 real contacts cannot fit in a datagram, but 21 can: the decoder bound, not k,
    # limits what it accepts.
    env = decode_datagram(
        _forge(_envelope(MessageType.NODES, [[IP4, 1], b"", [contact] * 21])), RECEIVER
    )
    assert isinstance(env.message, Nodes)
    assert len(env.message.contacts) == 21


def test_not_a_list_envelope() -> None:
    assert _decode_reason(_forge(_envelope(MessageType.PING, {"a": 1}))) == "msgpack"
    assert _decode_reason(_forge({"k" * 100: 1})) == "msgpack"
    assert _decode_reason(_forge("x" * 100)) == "schema"
    assert _decode_reason(_forge(b"\x00" * 60)) == "schema"


def test_trailing_bytes_after_envelope() -> None:
    assert _decode_reason(_forge(_envelope(MessageType.PING, []), extra=b"\x00")) == "msgpack"


def test_oversize_and_undersize() -> None:
    valid = encode_message(Ping(), TXID, SIGNER_AUTHS[0])
    assert _decode_reason(valid + b"\x00" * (MAX_DATAGRAM + 1 - len(valid))) == "oversize"
    assert _decode_reason(b"\x00" * (MAX_DATAGRAM + 1)) == "oversize"
    assert _decode_reason(b"") == "undersize"
    assert _decode_reason(valid[:20]) == "undersize"
    # Exactly the limit is not oversize: it fails later, for another reason.
    assert _decode_reason(b"\x00" * MAX_DATAGRAM) != "oversize"


@pytest.mark.parametrize(("depth", "reason"), [(1000, "schema"), (1130, "msgpack")])
def test_deep_nesting_is_rejected(depth: int, reason: str) -> None:
    payload = b"\x91" * depth + b"\x00"
    assert _decode_reason(payload + b"\x00" * 64) == reason


def test_decoded_contacts_are_built_per_decode_and_equal_the_originals() -> None:
    """Nothing is cached across decodes: two nodes decoding the same NODES answer get their
    own contact objects (the nodes of one process share no state that separate processes
    could not), equal, hashing alike and as immutable as ones built the ordinary way."""
    contacts = tuple(Contact(NodeId(7 * n + 1), f"198.51.100.{n}", 4000 + n) for n in range(20))
    data = encode_message(
        Nodes(("198.51.100.7", 65535), b"\x01" * 8, contacts), TXID, SIGNER_AUTHS[0]
    )
    first = decode_datagram(data, RECEIVER).message
    second = decode_datagram(data, Authenticator(Identity.generate(random.Random(3)))).message
    assert isinstance(first, Nodes) and isinstance(second, Nodes)
    assert first.contacts == second.contacts == contacts
    assert [hash(c) for c in first.contacts] == [hash(c) for c in contacts]
    assert all(a is not b for a, b in zip(first.contacts, second.contacts, strict=True))
    assert all(type(c) is Contact and type(c.node_id) is NodeId for c in first.contacts)
    with pytest.raises(AttributeError):
        first.contacts[0].port = 1  # type: ignore[misc]


def test_a_contact_memo_changes_nothing_but_the_objects_reused() -> None:
    """The simulator's shared memo (core/fields.py ContactMemo) decodes and encodes exactly
    as the per-node path: same bytes, equal contacts, the same errors for bad ones; a second
    decode reuses the first one's objects, and the memo stays within its bound."""
    memo = ContactMemo(size=8)
    signer = Authenticator(SIGNERS[0])
    signer.contacts = memo
    reader = Authenticator(Identity.generate(random.Random(4)))
    reader.contacts = memo
    contacts = tuple(Contact(NodeId(5 * n + 3), f"203.0.113.{n}", 5000 + n) for n in range(6))
    message = Nodes(("203.0.113.9", 4000), b"\x02" * 8, contacts)
    data = encode_message(message, TXID, signer)
    assert data == encode_message(message, TXID, signer)  # the memoised wire form
    assert data == encode_message(message, TXID, SIGNER_AUTHS[0])  # no memo: same bytes
    first, second = (decode_datagram(data, reader).message for _ in range(2))
    assert isinstance(first, Nodes) and isinstance(second, Nodes)
    assert first == second == decode_datagram(data, RECEIVER).message == message
    assert all(a is b for a, b in zip(first.contacts, second.contacts, strict=True))
    assert len(memo) <= 2 * memo.size
    moved = Nodes(message.observed, message.token, (Contact(NodeId(3), "203.0.113.0", 1),))
    got = decode_datagram(encode_message(moved, TXID, signer), reader).message
    assert got == moved  # the same id at another port is not mistaken for the memoised one
    for bad in ([[NodeId(3).to_bytes32(), b"\xcb\x00q\x00", 0]], [[b"x", b"\x01" * 4, 5]]):
        body = [[b"\xcb\x00q\t", 4000], b"\x02" * 8, bad]
        payload = msgpack.packb([PROTOCOL_VERSION, 0x82, TXID, SIGNERS[0].public_key, 0, body])
        datagram = payload + SIGNERS[0].sign(payload)
        for auth in (reader, RECEIVER):
            with pytest.raises(DecodeError):
                decode_datagram(datagram, auth)


def test_memo_packed_nodes_are_the_bytes_msgpack_packs_in_every_framing() -> None:
    """A memo splices each contact's packed bytes where the contact list would be packed:
    the datagram must be byte for byte the one packed without a memo, whatever the count
    (fixarray or array16 header), the address family, a handshake, padding or trimming."""
    memo = ContactMemo(size=64)
    signer = Authenticator(SIGNERS[0])
    signer.contacts = memo
    plain = SIGNER_AUTHS[0]
    for count in (0, 1, 15, 16, 20, MAX_CONTACTS):
        contacts = tuple(
            Contact(NodeId(7 * n + 1), f"203.0.113.{n}" if n % 3 else f"2001:db8::{n}", 1 + n * 997)
            for n in range(count)
        )
        message = Nodes(("203.0.113.9", 4000), b"\x02" * 8, contacts)
        framings: list[dict[str, Any]] = [
            {},
            {"pad_to": 1000},
            {"handshake": HandshakeAccept(b"\x05" * 32, 77)},
            {"max_size": 400},
        ]
        for framing in framings:
            for _ in range(2):  # the second time from the memo
                got = encode_message(message, TXID, signer, 3, **framing)
                assert got == encode_message(message, TXID, plain, 3, **framing)
        head = [0x82, TXID, 3]
        body = [[pack_ip("203.0.113.9"), 4000], b"\x02" * 8, fields._encode_contacts(contacts)]
        expected = msgpack.packb([*head, body], use_bin_type=True)
        assert codec._pack_nodes_memo(list(head), message, memo) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [b"\x01" * 32, b"\x01" * 4],  # two fields, not three
        [1, b"\x01" * 4, 5],  # the id is no bytes
        [b"\x01" * 31, b"\x01" * 4, 5],  # the id is short
        [b"\x01" * 32, "203.0.113.1", 5],  # the address is no bytes
        [b"\x01" * 32, b"\x01" * 5, 5],  # the address is 5 bytes
        [b"\x01" * 32, b"\x01" * 4, 0],  # port 0
        [b"\x01" * 32, b"\x01" * 4, "5"],  # a port that is no int
        [b"\x01" * 32, b"\x01" * 4, 65536],
        # what the memo's fast path must hand to the full checks
        [[1, 2], b"\x01" * 4, 5],  # an id that cannot be a key (unhashable)
        b"\x01\x01\x01",  # three items when unpacked, but no list
        "abc",
        None,
        [b"\x01" * 32, b"\x01" * 4, 5.0],  # equal to the memoised port, but no int
        [b"\x01" * 32, b"\x01" * 4, 5, 6],
        [b"\x01" * 32, [1, 1, 1, 1], 5],
    ],
)
def test_the_contact_memo_refuses_what_the_plain_decoder_refuses(bad: Any) -> None:
    """The memo's decoder (the simulator's path) raises the plain decoder's schema error, with
    the same message, for every malformed contact: after a good contact, and when the bad
    one reuses a memoised id (so the memo's fast path must not accept it)."""
    memo = ContactMemo(size=4)
    good = [b"\x01" * 32, b"\x01" * 4, 5]
    assert memo.decode([good]) == fields._decode_contacts([good])  # now memoised
    with pytest.raises(DecodeError) as plain:
        fields._decode_contacts([good, bad])
    with pytest.raises(DecodeError) as memoised:
        memo.decode([good, bad])
    assert plain.value.reason == memoised.value.reason == "schema"
    assert str(plain.value) == str(memoised.value)


def test_the_contact_memo_is_cleared_when_full() -> None:
    """A memo of size 2 never holds more than 2 decoded contacts: the third clears it, and a
    contact decoded again after the clear is equal to the first one (a fresh object). The
    same for packed contacts: the bytes stay those packed without a memo."""
    memo = ContactMemo(size=2)
    wires = [[NodeId(n).to_bytes32(), pack_ip(f"203.0.113.{n}"), 1000 + n] for n in (1, 2, 3)]
    first = memo.decode(wires[:1])
    memo.decode(wires[1:])
    # Cleared when the third arrived, then holding it alone: in the decoded contacts, and
    # in the contacts by id (a decoded contact is the memo's contact for its id too).
    assert len(memo) == 2
    again = memo.decode(wires[:1])
    assert again == first and again[0] is not first[0]
    contacts = tuple(Contact(NodeId(n), f"203.0.113.{n}", 1000 + n) for n in (1, 2, 3))
    packer = ContactMemo(size=2)
    for _ in range(2):
        assert packer.pack(contacts) == msgpack.packb(fields._encode_contacts(contacts))
        assert len(packer) <= 2


def test_a_signed_record_with_a_salt_too_long_or_not_bytes_is_a_schema_error() -> None:
    """A SIGNED record's salt is bytes of at most MAX_SALT_BYTES: anything else is refused
    at decoding (schema), before any signature check; the longest salt is accepted."""
    wire = [2, NodeId(9).to_bytes32(), b"v", 60, b"\x01" * 32, b"", 1, b"\x02" * 64]
    for salt, ok in ((b"s" * MAX_SALT_BYTES, True), (b"s" * (MAX_SALT_BYTES + 1), False)):
        wire[5] = salt
        if ok:
            assert fields._decode_record(wire).salt == salt
        else:
            with pytest.raises(DecodeError, match="salt") as error:
                fields._decode_record(wire)
            assert error.value.reason == "schema"
    wire[5] = "salt"
    with pytest.raises(DecodeError, match="salt"):
        fields._decode_record(wire)


def _unpack_outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except Exception as exc:  # the outcome to compare is the exception's type
        return "error", type(exc).__name__


def test_unpack_applies_exactly_the_declared_limits() -> None:
    """The decoder's msgpack call (literal keywords) behaves as ``unpackb`` with
    ``_UNPACK_LIMITS``: the same objects, and the same failures at every limit."""
    reference = functools.partial(msgpack.unpackb, **codec._UNPACK_LIMITS)
    pack = msgpack.packb
    cases = [
        pack([1, 2, b"x" * 8, [b"a", 3, True, None, 1.5, "text"]]),
        pack(list(range(codec.MAX_CONTACTS))),
        pack(list(range(codec.MAX_CONTACTS + 1))),  # array over the limit
        pack("s" * (codec.MAX_ERROR_TEXT * 4)),
        pack("s" * (codec.MAX_ERROR_TEXT * 4 + 1)),  # str over the limit
        pack(b"b" * MAX_DATAGRAM),
        pack(b"b" * (MAX_DATAGRAM + 1)),  # bin over the limit
        pack({}),
        pack({1: 2}),  # maps are refused
        pack(msgpack.ExtType(1, b"")),
        pack(msgpack.ExtType(1, b"e")),  # ext is refused
        pack([1, 2]) + b"\x00",  # trailing bytes
        pack([1, 2])[:-1],  # truncated
        b"\xc1",  # never used
        b"",
    ]
    rng = random.Random(9)
    cases += [rng.randbytes(rng.randrange(1, 60)) for _ in range(300)]
    for data in cases:
        assert _unpack_outcome(codec._unpack, data) == _unpack_outcome(reference, data), data


def test_the_contact_memo_refuses_a_bool_port_equal_to_a_memoised_one() -> None:
    """``True == 1``: a memoised contact at port 1 must not let ``True`` through."""
    memo = ContactMemo(size=4)
    good = [b"\x02" * 32, b"\x01" * 4, 1]
    assert memo.decode([good]) == fields._decode_contacts([good])
    for bad in ([b"\x02" * 32, b"\x01" * 4, True], [b"\x02" * 32, b"\x01" * 4, 1.0]):
        with pytest.raises(DecodeError) as plain:
            fields._decode_contacts([good, bad])
        with pytest.raises(DecodeError) as memoised:
            memo.decode([good, bad])
        assert str(plain.value) == str(memoised.value)


def test_the_contact_memo_decodes_as_the_plain_decoder_in_any_mix() -> None:
    """Random lists mixing memoised contacts, new ones and the same ids at other addresses:
    the memo returns what the plain decoder returns, the first time and the next."""
    rng = random.Random(21)
    memo = ContactMemo(size=64)
    pool = [
        [NodeId.random(rng).to_bytes32(), pack_ip(f"198.51.100.{i}"), 1000 + i] for i in range(100)
    ]
    for _ in range(300):
        values = []
        for _ in range(rng.randrange(0, 33)):
            wire = list(rng.choice(pool))
            if rng.random() < 0.1:
                wire[2] = rng.randrange(1, 65536)  # the same id at another port
            values.append(wire)
        got = memo.decode(values)
        assert got == fields._decode_contacts(values)
        assert memo.decode(values) == got


def test_the_memo_hands_out_one_contact_per_id_and_address() -> None:
    """``ContactMemo.contact`` returns the memo's equal contact (the object decoding gave,
    or the one packed), a new one for a new address; packing a list of the memo's own
    contacts (the fast path) gives the bytes msgpack packs."""
    rng = random.Random(31)
    memo = ContactMemo(size=64)
    ids = [NodeId.random(rng) for _ in range(10)]
    wires = [[n.to_bytes32(), pack_ip(f"203.0.113.{i}"), 2000 + i] for i, n in enumerate(ids)]
    decoded = memo.decode(wires)
    for i, contact in enumerate(decoded):
        assert memo.contact(ids[i], f"203.0.113.{i}", 2000 + i) is contact
        moved = memo.contact(ids[i], f"203.0.113.{i}", 3000 + i)
        assert moved == Contact(ids[i], f"203.0.113.{i}", 3000 + i) and moved is not contact
        assert memo.contact(ids[i], f"203.0.113.{i}", 3000 + i) is moved
    now = tuple(memo.contact(n, f"203.0.113.{i}", 3000 + i) for i, n in enumerate(ids))
    for contacts in (now, now[:1], (), decoded, now[:5] + decoded[5:]):
        assert memo.pack(contacts) == msgpack.packb(fields._encode_contacts(contacts))
