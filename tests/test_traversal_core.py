"""The NAT traversal state machines without a network: wire bodies, the sealed offer and
answer (a rendezvous can drop but not forge or redirect), the punch address rule, the
rendezvous registrations and their limits, the relay's circuits and their limits, channel
crypto, and the registrar's keepalive and re-registration."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.channel import (
    DATA,
    KIND_RELAYED,
    MAX_CHANNEL_PAYLOAD,
    PING,
    RELAY_HEADER,
    Channel,
    relayed,
    release,
)
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM
from nautilus_kad.core.connectwire import MAX_SEALED
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.introduction import (
    ANSWER,
    OFFER,
    channel_keys,
    open_sealed,
    punchable,
    seal,
)
from nautilus_kad.core.messages import (
    Connect,
    ConnectReply,
    Contact,
    Forward,
    ForwardReply,
    Register,
    RegisterReply,
    TraversalStatus,
)
from nautilus_kad.core.relay import Relay
from nautilus_kad.core.rendezvous import Quota, Registrar, Registrations
from nautilus_kad.core.session import SESSION_MAGIC
from nautilus_kad.core.traversalconfig import TraversalConfig

RNG = random.Random(12)
A, B, R = (Authenticator(Identity.generate(RNG)) for _ in range(3))
CFG = TraversalConfig()


@pytest.mark.parametrize(
    "message",
    [
        Register(),
        RegisterReply(("1.2.3.4", 5), TraversalStatus.IP_LIMIT, 70),
        Connect(NodeId(7), b"offer", True),
        ConnectReply(
            ("::1", 9),
            TraversalStatus.OK,
            b"answer",
            ("5.6.7.8", 1),
            3,
            TraversalStatus.RESOURCE_LIMIT,
        ),
        ConnectReply(
            ("1.2.3.4", 9), TraversalStatus.NOT_FOUND, b"", None, 0, TraversalStatus.NO_RELAY
        ),
        Forward(b"offer", ("9.9.9.9", 99), 2**32 - 1),
        ForwardReply(("1.1.1.1", 1), TraversalStatus.REFUSED, b""),
    ],
)
def test_traversal_messages_round_trip_in_a_signed_envelope(message: object) -> None:
    data = encode_message(message, b"t" * 8, A)  # type: ignore[arg-type]
    assert decode_datagram(data, B).message == message


def test_an_oversized_sealed_blob_is_refused_by_the_decoder() -> None:
    data = encode_message(Connect(NodeId(7), b"x" * (MAX_SEALED + 1), False), b"t" * 8, A)
    with pytest.raises(DecodeError):
        decode_datagram(data, B)


def _offer(addresses: list[tuple[str, int]] | None = None) -> bytes:
    return seal(A, OFFER, B.identity.node_id, b"n" * 16, 1000.0, b"e" * 32, 77,
                "endpoint-independent", addresses or [("203.0.113.5", 4000)])  # fmt: skip


def test_an_offer_verifies_and_names_its_signer() -> None:
    intro = open_sealed(B, _offer(), OFFER)
    assert intro.peer_id == A.identity.node_id
    assert intro.other == B.identity.node_id
    assert intro.channel == 77 and intro.nat_class == "endpoint-independent"
    assert intro.addresses == (("203.0.113.5", 4000),)


def test_a_rendezvous_cannot_alter_an_offer_it_forwards() -> None:
    data = bytearray(_offer())
    flipped = 0
    for position in range(0, len(data), 7):  # any altered byte breaks the signature
        changed = bytearray(data)
        changed[position] ^= 0x01
        with pytest.raises(DecodeError):
            open_sealed(B, bytes(changed), OFFER)
        flipped += 1
    assert flipped > 20


def test_a_rendezvous_cannot_pass_an_offer_off_as_an_answer_or_sign_its_own() -> None:
    with pytest.raises(DecodeError):
        open_sealed(B, _offer(), ANSWER)  # the kind is signed
    forged = seal(R, OFFER, B.identity.node_id, b"n" * 16, 1000.0, b"e" * 32, 77, "public",
                  [("198.51.100.1", 1)])  # fmt: skip
    intro = open_sealed(B, forged, OFFER)
    assert intro.peer_id == R.identity.node_id  # its own offer names the rendezvous, not A


def test_punches_go_only_to_signed_addresses_at_the_observed_ip() -> None:
    signed = (("203.0.113.5", 4000), ("198.51.100.9", 53), ("10.0.0.2", 4000))
    # The rendezvous saw the peer at 203.0.113.5: the third party 198.51.100.9 is never hit.
    assert punchable(signed, "203.0.113.5", "192.0.2.1") == [("203.0.113.5", 4000)]
    # A lying rendezvous naming the third party's IP still gets nothing the peer did not sign
    # at that IP, and the peer alone cannot aim at an IP the rendezvous did not see it at.
    assert punchable((("203.0.113.5", 4000),), "198.51.100.9", None) == []
    # Behind the same NAT (same public IP), LAN addresses are tried too.
    assert punchable(signed, "203.0.113.5", "203.0.113.5") == [
        ("203.0.113.5", 4000),
        ("10.0.0.2", 4000),
    ]


def test_channel_keys_pair_up_and_datagrams_authenticate() -> None:
    shared = b"s" * 32
    a_id, b_id = A.identity.node_id, B.identity.node_id
    i2r, r2i = channel_keys(shared, a_id, b_id, b"1" * 32, b"2" * 32, b"n" * 16)
    ours = Channel(1, b_id, 2, i2r, r2i, initiator=True, query_id=1, now=0.0)
    theirs = Channel(2, a_id, 1, r2i, i2r, initiator=False, query_id=0, now=0.0)
    data = ours.seal(DATA, b"hello")
    assert theirs.open(data, 1.0) == (DATA, b"hello")
    assert theirs.open(data, 1.0) is None  # replay
    tampered = bytearray(ours.seal(PING, b"12345678"))
    tampered[-1] ^= 1
    assert theirs.open(bytes(tampered), 1.0) is None
    big = ours.seal(DATA, bytes(MAX_CHANNEL_PAYLOAD))
    assert len(relayed(1, big)) == MAX_DATAGRAM  # the largest payload still fits relayed


def test_registrations_keep_the_observed_mapping_and_their_limits() -> None:
    stats: Counter[str] = Counter()
    config = replace(CFG, max_registrations=4, max_registrations_per_ip=2)
    table = Registrations(config, stats)
    ids = [NodeId(i) for i in range(1, 8)]
    assert table.register(ids[0], ("1.1.1.1", 1), 0.0) is TraversalStatus.OK
    assert table.register(ids[1], ("1.1.1.1", 2), 0.0) is TraversalStatus.OK
    assert table.register(ids[2], ("1.1.1.1", 3), 0.0) is TraversalStatus.IP_LIMIT
    # A restart (same id, new mapping) takes no new slot, and the new mapping wins.
    for port in range(10, 20):
        assert table.register(ids[1], ("1.1.1.1", port), 1.0) is TraversalStatus.OK
    assert len(table) == 2 and table.address_of(ids[1], 1.0) == ("1.1.1.1", 19)
    assert table.register(ids[3], ("2.2.2.2", 1), 1.0) is TraversalStatus.OK
    assert table.register(ids[4], ("3.3.3.3", 1), 1.0) is TraversalStatus.OK
    assert table.register(ids[5], ("4.4.4.4", 1), 1.0) is TraversalStatus.RESERVATION_REFUSED
    assert stats["rendezvous.refused.ip_limit"] == 1
    assert stats["rendezvous.refused.reservation_refused"] == 1
    # Leases run out: slots come back.
    assert table.address_of(ids[0], config.lease + 1) is None
    assert table.register(ids[5], ("4.4.4.4", 1), config.lease + 2) is TraversalStatus.OK


def test_quota_bounds_requests_per_ip_and_in_total() -> None:
    quota = Quota(replace(CFG, serve_per_ip=3, serve_global=5))
    assert [quota.admit("1.1.1.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert [quota.admit(f"2.2.2.{i}", 0.0) for i in range(3)] == [True, True, False]
    assert quota.admit("1.1.1.1", CFG.serve_period + 1)  # a new period


def test_relay_forwards_same_size_only_from_each_side_and_within_its_limits() -> None:
    stats: Counter[str] = Counter()
    config = replace(CFG, max_circuits=3, max_circuits_per_peer=2, circuit_bytes=100)
    relay = Relay(config, random.Random(1), stats)
    a, b, stranger = ("1.1.1.1", 1), ("2.2.2.2", 2), ("6.6.6.6", 6)
    status, circuit = relay.open(a, b, 42, 0.0)
    assert status is TraversalStatus.OK and circuit is not None
    inner = bytes([SESSION_MAGIC, 3]) + b"x" * 40
    out = relay.forward(relayed(circuit.a_id, inner), a, 1.0)
    assert len(out) == 1
    ((data, to),) = out
    assert to == b and RELAY_HEADER.unpack_from(data) == (SESSION_MAGIC, KIND_RELAYED,
                                                            circuit.b_id)  # fmt: skip
    assert len(data) == len(relayed(circuit.a_id, inner))  # never amplifies
    assert relay.forward(relayed(circuit.a_id, inner), stranger, 1.0) == []  # wrong sender
    assert len(relay.forward(relayed(circuit.b_id, inner), b, 1.0)) == 1  # the way back
    assert len(relay.forward(relayed(circuit.a_id, inner), a, 1.0)) == 1  # 84 bytes so far
    # Over 100 bytes: closed, and each side gets a 6-byte end notice (never more than what
    # came in), then again on each later datagram from that side, from no one else.
    assert relay.forward(relayed(circuit.a_id, inner), a, 1.0) == [
        (release(circuit.a_id), a), (release(circuit.b_id), b)
    ]  # fmt: skip
    assert stats["relay.dropped.bytes"] == 1 and len(relay) == 0  # closed at the limit
    assert relay.knows(relayed(circuit.b_id, inner))
    assert relay.forward(relayed(circuit.b_id, inner), b, 1.5) == [(release(circuit.b_id), b)]
    assert relay.forward(relayed(circuit.b_id, inner), stranger, 1.5) == []
    # Circuits per peer, then in total.
    assert relay.open(a, b, 42, 2.0)[0] is TraversalStatus.OK
    assert relay.open(("7.7.7.7", 7), b, 42, 2.0)[0] is TraversalStatus.OK
    assert relay.open(("8.8.8.8", 8), b, 42, 2.0)[0] is TraversalStatus.RESOURCE_LIMIT
    assert relay.open(("8.8.8.8", 8), ("3.3.3.3", 3), 43, 2.0)[0] is TraversalStatus.OK
    assert relay.open(("9.9.9.9", 9), ("4.4.4.4", 4), 44, 2.0)[0] is TraversalStatus.RESOURCE_LIMIT
    assert stats["relay.refused.resource_limit"] == 2
    # A release counts only from the circuit's own side; idle circuits expire.
    first = relay.circuits[0]
    relay.release(release(first.a_id), stranger)
    assert len(relay) == 3
    relay.release(release(first.a_id), first.a)
    assert len(relay) == 2
    relay.expire(2.0 + config.circuit_idle + 1)
    assert len(relay) == 0
    assert relay.open(a, b, 42, 100.0)[0] is TraversalStatus.OK
    assert replace(config, relay=False) and Relay(replace(config, relay=False), RNG,
                                                  stats).open(a, b, 1, 0.0)[0] is (
        TraversalStatus.NO_RELAY
    )  # fmt: skip


def test_registrar_registers_with_the_closest_and_replaces_silent_ones() -> None:
    stats: Counter[str] = Counter()
    registrar = Registrar(CFG, stats)
    registrar.start(0.0)
    contacts = [Contact(NodeId(i), f"10.0.0.{i}", 4000) for i in range(1, 7)]
    chosen = registrar.due(contacts, 0.0)
    assert [c.node_id for c in chosen] == [NodeId(1), NodeId(2), NodeId(3)]
    assert registrar.next_round == CFG.keepalive  # the keepalive: well under 30 s
    for contact in chosen:
        registrar.answered(contact.node_id, ("198.51.100.1", 5000), TraversalStatus.OK, 0.1)
    assert len(registrar.registered()) == 3 and registrar.own_ip() == "198.51.100.1"
    # Server 2 stops answering twice: it is replaced by the next closest, at once.
    registrar.failed(NodeId(2), 20.5)
    assert registrar.next_round <= 21.5
    chosen = registrar.due(contacts, 21.5)
    registrar.failed(NodeId(2), 23.0)
    chosen = registrar.due(contacts, 24.0)
    assert NodeId(2) not in [c.node_id for c in chosen] and len(chosen) == 3
    # Our mapping changed (a server sees a new port): register again with all, now.
    registrar.next_round = 100.0
    registrar.answered(NodeId(1), ("198.51.100.1", 6000), TraversalStatus.OK, 30.0)
    assert registrar.next_round == 30.0
    assert stats["rendezvous.client.address_changed"] == 1


def test_registrar_never_shuts_a_failing_rendezvous_out_for_good() -> None:
    registrar = Registrar(CFG, Counter())
    registrar.start(0.0)
    contacts = [Contact(NodeId(i), f"10.0.0.{i}", 4000) for i in range(1, 4)]
    for at in (0.0, 1.0, 2.0):  # every server fails twice and more (a lossy path)
        for contact in registrar.due(contacts, at):
            registrar.failed(contact.node_id, at + 0.5)
    chosen = registrar.due(contacts, 3.0)
    assert [c.node_id for c in chosen] == [NodeId(1), NodeId(2), NodeId(3)]
    registrar.answered(NodeId(2), ("198.51.100.1", 1), TraversalStatus.OK, 3.1)
    assert [s.contact.node_id for s in registrar.registered()] == [NodeId(2)]
