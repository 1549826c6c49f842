"""The reachability messages (core/natwire.py), the dial-back rules (core/dialback.py) and
the NAT state that ties them together (core/nat.py)."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.dialback import ContactedIps, Helper, Prober, ServeLimiter, Verdict
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.messages import MessageType
from nautilus_kad.core.nat import NatState
from nautilus_kad.core.natclass import NatClass
from nautilus_kad.core.natconfig import NatConfig
from nautilus_kad.core.natwire import (
    NAT_TYPES,
    Dialback,
    DialbackReply,
    NatMessage,
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    ProbeStatus,
    decode_nat_body,
    encode_nat_body,
)
from nautilus_kad.core.reachability import Mode

CFG = NatConfig()
A = ("198.51.100.7", 40000)  # the requester's observed address
B = ("192.0.2.10", 4000)
C = ("203.0.113.20", 4000)

# --- wire ---------------------------------------------------------------------------------

nonces = st.binary(min_size=8, max_size=8)
ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
addresses = st.tuples(ips, st.integers(1, 65535))
messages = st.one_of(
    st.builds(Dialback, nonces),
    st.builds(Probe, nonces),
    st.builds(ProbeRelay, nonces, addresses),
    st.builds(DialbackReply, addresses, st.sampled_from(ProbeStatus)),
    st.builds(ProbeRelayReply, addresses, st.sampled_from(ProbeStatus)),
)


def roundtrip(message: NatMessage) -> NatMessage:
    raw = msgpack.packb(encode_nat_body(message), use_bin_type=True)
    body = msgpack.unpackb(raw, raw=False, use_list=True)
    return decode_nat_body(message.TYPE, body)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_every_message_roundtrips(message: NatMessage) -> None:
    decoded = roundtrip(message)
    if isinstance(message, ProbeRelay | DialbackReply | ProbeRelayReply):
        # Addresses come back in canonical text form.
        assert type(decoded) is type(message)
    else:
        assert decoded == message
    assert len(msgpack.packb(encode_nat_body(message))) <= 40  # tiny next to the 1200-byte datagram


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(list(NAT_TYPES.values())),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.binary(max_size=20)
        | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=10,
    ),
)
def test_garbage_raises_only_decode_errors(msg_type: MessageType, body: Any) -> None:
    with contextlib.suppress(DecodeError):
        decode_nat_body(msg_type, body)


@pytest.mark.parametrize(
    ("msg_type", "body"),
    [
        (MessageType.DIALBACK, [b"1234567"]),
        (MessageType.DIALBACK, [b"12345678", b"extra"]),
        (MessageType.PROBE, [True]),
        (MessageType.PROBE_RELAY, [b"12345678", [b"\x01\x02\x03", 80]]),
        (MessageType.PROBE_RELAY, [b"12345678", [b"\x01\x02\x03\x04", 0]]),
        (MessageType.PROBE_RELAY, [b"12345678", [b"\x01\x02\x03\x04", True]]),
        (MessageType.DIALBACK_REPLY, [[b"\x01\x02\x03\x04", 80], 99]),
        (MessageType.PROBE_RELAY_REPLY, [[b"\x01\x02\x03\x04", 80], False]),
        (MessageType.DIALBACK_REPLY, "not a list"),
    ],
)
def test_strict_decoding(msg_type: MessageType, body: Any) -> None:
    with pytest.raises(DecodeError):
        decode_nat_body(msg_type, body)


def test_type_codes_are_new() -> None:
    kademlia = {0x01, 0x02, 0x03, 0x04, 0x81, 0x82, 0x83, 0x84, 0x85}
    assert len(NAT_TYPES) == 5 and not set(NAT_TYPES) & kademlia
    assert kademlia | set(NAT_TYPES) <= {int(t) for t in MessageType}  # part 2 adds more


SENDER = Authenticator(Identity.generate(random.Random(11)))
RECEIVER = Authenticator(Identity.generate(random.Random(12)))


@settings(max_examples=100, deadline=None)
@given(messages, st.binary(min_size=8, max_size=8))
def test_signed_envelopes_carry_them(message: NatMessage, txid: bytes) -> None:
    """Authenticated like every other message: signed, and refused when tampered with."""
    data = encode_message(message, txid, SENDER, FLAG_CLIENT)
    envelope = decode_datagram(data, RECEIVER)
    assert envelope.sender_id == SENDER.identity.node_id and envelope.flags == FLAG_CLIENT
    assert type(envelope.message) is type(message) and envelope.txid == txid
    assert encode_nat_body(envelope.message) == encode_nat_body(message)  # type: ignore[arg-type]
    tampered = bytearray(data)
    tampered[-70] ^= 1
    with pytest.raises(DecodeError):
        decode_datagram(bytes(tampered), RECEIVER)


def test_an_engine_serves_them_without_sending_to_third_parties() -> None:
    """A server with an empty table: a DIALBACK gets NO_PROBER, a relay from a stranger is
    REFUSED, a PROBE nobody asked for and an unsolicited reply get nothing; every answer
    goes back to where the request came from, and nothing to anyone else."""
    engine = KadEngine(Identity.generate(random.Random(13)), rng=random.Random(1), now=0.0)
    nat_messages: list[NatMessage] = [
        Dialback(b"n" * 8),
        ProbeRelay(b"n" * 8, A),
        Probe(b"n" * 8),
        DialbackReply(A, ProbeStatus.ARRANGED),
    ]
    for n, message in enumerate(nat_messages):
        engine.receive_datagram(encode_message(message, bytes([n]) * 8, SENDER), B, float(n))
    out = engine.datagrams_to_send()
    assert [address for _, address in out] == [B, B]
    replies = [decode_datagram(data, RECEIVER).message for data, _ in out]
    assert replies == [
        DialbackReply(B, ProbeStatus.NO_PROBER),
        ProbeRelayReply(B, ProbeStatus.REFUSED),
    ]
    assert engine.stats["rx.dropped.unsolicited"] == 1
    assert len(engine.table) == 0


# --- limits -------------------------------------------------------------------------------


def test_serve_limiter_per_key_and_total() -> None:
    limiter = ServeLimiter(per_key=3, total=5, period=60.0, capacity=100)
    assert [limiter.allow(("a",), 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(("b",), 1.0) and limiter.allow(("c",), 1.0)
    assert not limiter.allow(("d",), 2.0)  # the total is spent
    assert limiter.allow(("a",), 61.0)  # a new period
    capped = ServeLimiter(per_key=1, total=10**6, period=60.0, capacity=8)
    for n in range(1000):
        capped.allow((str(n),), 0.0)
    assert len(capped) == 8


# --- helper (B) ---------------------------------------------------------------------------


def test_helper_probes_only_the_requesters_address_through_a_third_node() -> None:
    helper = Helper(CFG, random.Random(1))
    servers = [A, B, (A[0], 9999), C]
    for n in range(3):
        decision = helper.on_dialback(A, servers, own_ip=B[0], now=float(n))
        assert decision.status is ProbeStatus.ARRANGED
        assert decision.target == A  # always where the request came from
        assert decision.prober == C  # neither the requester's IP nor our own
    assert helper.on_dialback(A, servers, B[0], 3.0).status is ProbeStatus.RATE_LIMITED
    assert helper.on_dialback(("192.0.2.99", 1), [B], B[0], 3.0).status is ProbeStatus.NO_PROBER
    assert helper.stats["dialback.refused.rate"] == 1


def test_helper_flood_is_bounded_globally() -> None:
    helper = Helper(CFG, random.Random(1))
    arranged = sum(
        helper.on_dialback((f"10.{n // 256}.{n % 256}.1", 5), [C], B[0], 1.0).status
        is ProbeStatus.ARRANGED
        for n in range(10_000)
    )
    assert arranged == CFG.serve_global


# --- prober (C) ---------------------------------------------------------------------------


def test_prober_rules() -> None:
    prober = Prober(CFG)
    ok = prober.on_relay(B, True, A, C, request_size=200, probe_size=100, now=0.0)
    assert ok.status is ProbeStatus.ARRANGED and ok.copies == 2
    # No larger than the request: a small relay request buys one copy, or none.
    assert prober.on_relay(B, True, A, C, 150, 100, 0.0).copies == 1
    assert prober.on_relay(B, True, A, C, 99, 100, 0.0).status is ProbeStatus.REFUSED
    # Only from a node of our table; never at the relayer itself or at ourselves.
    assert prober.on_relay(B, False, A, C, 500, 100, 0.0).status is ProbeStatus.REFUSED
    assert prober.on_relay(B, True, (B[0], 7), C, 500, 100, 0.0).status is ProbeStatus.REFUSED
    assert prober.on_relay(B, True, C, C, 500, 100, 0.0).status is ProbeStatus.REFUSED
    assert prober.stats["relay.refused.unknown"] == 1
    assert prober.stats["relay.refused.target"] == 2


def test_many_relayers_cannot_aim_probes_at_one_victim() -> None:
    prober = Prober(CFG)
    victim = ("198.51.100.200", 53)
    probed = sum(
        prober.on_relay((f"192.0.{n}.1", 4000), True, victim, C, 500, 100, 0.0).status
        is ProbeStatus.ARRANGED
        for n in range(200)
    )
    assert probed == CFG.serve_per_requester


# --- requester (A) and the whole state ----------------------------------------------------


def test_contacted_ips_window_and_capacity() -> None:
    contacted = ContactedIps(window=300.0, capacity=4)
    contacted.sent("192.0.2.1", 0.0)
    assert contacted.recently("192.0.2.1", 299.0)
    assert not contacted.recently("192.0.2.1", 300.0)
    assert not contacted.recently("192.0.2.2", 0.0)
    for n in range(10):
        contacted.sent(f"10.0.0.{n}", 100.0)
    # "192.0.2.1" was forgotten for room while it could still have been in the window.
    assert contacted.recently("192.0.2.1", 200.0)
    assert len(contacted) == 4


def test_inbound_traffic_keeps_a_contacted_ip_contacted() -> None:
    """A NAT refreshes a hole on inbound traffic too: an IP we sent to that keeps writing
    to us stays contacted; one that went quiet for a window is clear for good."""
    contacted = ContactedIps(window=300.0, capacity=16)
    contacted.sent("192.0.2.1", 0.0)
    for t in (200.0, 400.0, 600.0):  # its probes come every 200 s: the hole never closes
        contacted.received("192.0.2.1", t)
    assert contacted.recently("192.0.2.1", 850.0)
    assert contacted.clear_at("192.0.2.1") == 900.0
    assert not contacted.recently("192.0.2.1", 900.0)
    contacted.received("192.0.2.1", 950.0)  # the hole had closed: this one was unsolicited
    assert not contacted.recently("192.0.2.1", 951.0)
    contacted.received("198.51.100.7", 10.0)  # never sent to: never contacted
    assert not contacted.recently("198.51.100.7", 10.0)
    assert contacted.clear_at("198.51.100.7") == -math.inf


def test_tainted_rounds_in_a_row_make_the_next_wait_for_a_clean_prober() -> None:
    state = NatState(CFG, random.Random(5), 0.0)
    probers = ["192.0.2.1", "192.0.2.2"]
    for ip in probers:
        state.sent_to(ip, 0.0)
    assert not state.hold_off(probers, 1.0)  # no evidence yet: a big network's prober is new
    for n in range(CFG.probe_window):
        nonce = state.start_round(B, 1.0, answer_timeout=2.0)
        state.dialback_answered(nonce, ProbeStatus.ARRANGED, 1.5)
        state.received_from("192.0.2.1", 2.0)
        assert state.probe_arrived(("192.0.2.1", 4000), nonce, 2.0) is Verdict.TAINTED
        state.probe_arrived(("192.0.2.1", 4000), nonce, 2.0)  # its second copy
        assert state.hold_off(probers, 3.0) is (n == CFG.probe_window - 1)
    # Every round tainted, both still contacted: wait for the first to clear.
    assert state.tracker.next_probe_at == CFG.contacted_window
    assert not state.hold_off(probers, CFG.contacted_window)
    assert state.stats()["rounds.held_off"] == 1


def observe_all(state: NatState, seen: Any, now: float) -> None:
    for n in range(6):
        state.observed((f"192.0.{n}.10", 4000), seen, now)


def test_a_full_round_promotes_and_demotes() -> None:
    state = NatState(CFG, random.Random(5), 0.0)
    observe_all(state, A, 0.0)
    assert state.voters[4].address == A
    assert state.classes[4] is NatClass.ENDPOINT_INDEPENDENT
    assert state.is_client and state.rounds_wanted(0.0) == CFG.max_rounds_in_flight
    helpers = [(f"192.0.{n}.10", 4000) for n in range(5)]
    nonces = [state.start_round(h, 0.0, answer_timeout=2.0) for h in helpers]
    for h in helpers:
        state.sent_to(h[0], 0.0)
    for nonce in nonces:
        state.dialback_answered(nonce, ProbeStatus.ARRANGED, 1.0)
    # A probe from a helper's IP, or from an IP we contacted, proves nothing.
    assert state.probe_arrived(helpers[0], nonces[0], 1.5) is Verdict.TAINTED
    assert state.probe_arrived((helpers[1][0], 7777), nonces[0], 1.5) is Verdict.TAINTED
    assert state.probe_arrived(C, b"\x00" * 8, 1.5) is Verdict.UNKNOWN
    for n, nonce in enumerate(nonces[:3]):
        assert state.probe_arrived((f"203.0.113.{n}", 4000), nonce, 2.0) is Verdict.SUCCESS
        assert state.probe_arrived((f"203.0.113.{n}", 4000), nonce, 2.0) is Verdict.UNKNOWN
    assert state.mode is Mode.SERVER
    state.handle_timer(1.0 + CFG.probe_timeout)  # the other two rounds fail
    assert state.tracker.failures_in_row == 2 and state.mode is Mode.SERVER
    snap = state.snapshot(10.0)
    assert snap["mode"] == "server" and snap["nat_class"]["ipv4"] == "endpoint-independent"
    assert snap["external"]["ipv4"]["address"] == A
    assert snap["stats"]["probes.answered"] == 3
    assert snap["stats"]["probes.tainted"] == 2
    # The address changes: demoted at once, whatever the dwell.
    t = 10.0 + CFG.vote_change_interval
    new = ("198.51.100.8", 41000)
    for n in range(6):
        state.observed((f"192.0.{n}.10", 4000), new, t)
    assert state.voters[4].address == new
    assert state.mode is Mode.CLIENT
    kinds = [type(c).__name__ for c in state.changes]
    assert kinds.count("ModeChange") == 2 and "AddressChange" in kinds


def test_unarranged_rounds_are_inconclusive() -> None:
    state = NatState(CFG, random.Random(5), 0.0)
    nonce = state.start_round(B, 0.0, answer_timeout=2.0)
    state.dialback_answered(nonce, ProbeStatus.NO_PROBER, 1.0)
    other = state.start_round(C, 1.0, answer_timeout=2.0)
    state.handle_timer(5.0)  # the helper never answered
    assert other not in state.rounds.rounds
    assert list(state.tracker.results) == []
    assert state.stats()["rounds.inconclusive"] == 2


def test_fixed_modes() -> None:
    assert NatState(CFG, random.Random(1), 0.0, mode="server").mode is Mode.SERVER
    client = NatState(CFG, random.Random(1), 0.0, mode="client")
    assert client.is_client and client.rounds_wanted(1e9) == 0
    with pytest.raises(ValueError, match="mode"):
        NatState(CFG, random.Random(1), 0.0, mode="sometimes")


def test_public_class_needs_the_bound_address() -> None:
    state = NatState(CFG, random.Random(1), 0.0, local=A)
    observe_all(state, A, 0.0)
    assert state.classes[4] is NatClass.PUBLIC


def test_a_node_bound_to_every_address_is_public_when_the_external_ip_is_its_own() -> None:
    for own, expected in ((True, NatClass.PUBLIC), (False, NatClass.ENDPOINT_INDEPENDENT)):
        state = NatState(CFG, random.Random(1), 0.0, local=("0.0.0.0", A[1]))
        state.is_local = lambda ip, own=own: own and ip == A[0]  # type: ignore[misc]
        observe_all(state, A, 0.0)
        assert state.classes[4] is expected


def test_class_survives_votes_ageing_out() -> None:
    state = NatState(CFG, random.Random(1), 0.0)
    observe_all(state, A, 0.0)
    assert state.classes[4] is NatClass.ENDPOINT_INDEPENDENT
    later = CFG.vote_window * 3  # an idle node: every vote expired; then one answer
    state.handle_timer(later)
    state.observed(("192.0.9.10", 4000), A, later)
    assert state.classes[4] is NatClass.ENDPOINT_INDEPENDENT
    assert not any(type(c).__name__ == "ClassChange" and c.new is NatClass.UNKNOWN
                   for c in state.changes)  # fmt: skip


class _OrderedServeLimiter:
    """The limiter as it was, on an OrderedDict: the model the plain-dict one must match."""

    def __init__(self, per_key: int, total: int, period: float, capacity: int) -> None:
        from collections import OrderedDict  # noqa: PLC0415

        self.per_key, self.total, self.period, self.capacity = per_key, total, period, capacity
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._window = (-math.inf, 0)

    def allow(self, keys: tuple[str, ...], now: float) -> bool:
        start, used = self._window
        if now - start >= self.period:
            start, used = now, 0
        if used >= self.total:
            self._window = (start, used)
            return False
        counts = []
        for key in keys:
            k_start, k_used = self._keys.get(key, (now, 0))
            if now - k_start >= self.period:
                k_start, k_used = now, 0
            if k_used >= self.per_key:
                return False
            counts.append((key, k_start, k_used))
        for key, k_start, k_used in counts:
            self._keys.pop(key, None)
            self._keys[key] = (k_start, k_used + 1)
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        self._window = (start, used + 1)
        return True


@pytest.mark.parametrize("seed", range(3))
def test_serve_limiter_grants_what_the_ordered_dict_one_granted(seed: int) -> None:
    rng = random.Random(seed)
    limiter = ServeLimiter(per_key=2, total=6, period=10.0, capacity=5)
    model = _OrderedServeLimiter(per_key=2, total=6, period=10.0, capacity=5)
    now = 0.0
    for _ in range(5000):
        now += rng.random()
        keys = tuple(f"10.0.0.{rng.randrange(12)}" for _ in range(rng.randrange(1, 3)))
        assert limiter.allow(keys, now) == model.allow(keys, now)
        assert list(limiter._keys.items()) == list(model._keys.items())
