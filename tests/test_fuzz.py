"""Fuzzing the decoder and the engine's datagram entry point (Hypothesis, brief in CI).

The generators and checks live in benchmarks/fuzz.py, whose long run (``python -m
benchmarks.fuzz --inputs 1000000``) uses the same targets; here Hypothesis drives them for a
few hundred inputs, and a structure strategy of its own builds signed envelopes whose fields
are arbitrary msgpack values.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import EngineTarget, FindingError, check_decode, hostile, receiver_for
from nautilus_kad.core.codec import PROTOCOL_VERSION, decode_datagram
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.messages import Contact, MessageType

FUZZ = hostile(7)
RECEIVER = receiver_for(FUZZ, Identity.generate(random.Random(99)))
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=80)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


@QUICK
@given(st.binary(max_size=1400))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    # Unsigned by anyone RECEIVER knows: nothing random can be accepted.
    assert not check_decode(data, RECEIVER, FUZZ.signers[0])


@QUICK
@given(
    st.sampled_from([int(t) for t in MessageType]),
    msgpack_values,
    st.sampled_from([None, b"", b"\x00" * 40]),
    st.integers(0, 2),
)
def test_signed_envelopes_with_arbitrary_bodies(
    msg_type: int, body: Any, extra: bytes | None, who: int
) -> None:
    """Well-signed envelopes reach the schema checks: only DecodeError, and an accepted one
    round-trips."""
    fields = [PROTOCOL_VERSION, msg_type, b"12345678", FUZZ.identities[who].public_key, 0, body]
    if extra is not None:
        fields += [None, extra]
    payload = msgpack.packb(fields, use_bin_type=True)
    data = payload + FUZZ.signers[who].sign(payload)
    check_decode(data, RECEIVER, FUZZ.signers[who])


@QUICK
@given(st.integers(min_value=0, max_value=2**32))
def test_mutated_valid_datagrams(seed: int) -> None:
    fuzz = hostile(seed % 5)
    fuzz.rng.seed(seed)
    accepted = 0
    for _ in range(5):
        data, who = fuzz.datagram()
        accepted += check_decode(data, RECEIVER, fuzz.signers[who])
    assert 0 <= accepted <= 5


def test_valid_datagrams_are_accepted_and_round_trip() -> None:
    # Control: the generator's unmutated output passes, so mutations are measured against it.
    fuzz = hostile(3)
    for _ in range(30):
        data, who = fuzz.valid()
        assert check_decode(data, RECEIVER, fuzz.signers[who])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32), st.lists(st.binary(max_size=300), max_size=5))
def test_engine_survives_hostile_datagrams(seed: int, raw: list[bytes]) -> None:
    """No exception escapes, every rejected datagram is counted as a drop, what the engine
    sends decodes, and its table and store stay consistent (EngineTarget checks each)."""
    fuzz = hostile(seed % 3)
    fuzz.rng.seed(seed)
    target = EngineTarget(seed, fuzz)
    for data in raw:
        target.feed(data, 0)
    for _ in range(40):
        data, who = fuzz.datagram()
        target.feed(data, who)
    assert target.engine.stats["rx.datagrams"] == len(raw) + 40


def test_engine_target_catches_broken_invariants() -> None:
    """The checks can fail: a table holding the node itself is reported."""
    target = EngineTarget(1, hostile(1))
    target.check()
    own = target.engine.node_id
    bucket = target.engine.table._bucket(0, target.now)
    from nautilus_kad.core.buckets import Entry  # noqa: PLC0415 - only this test pokes inside

    bucket.entries[own] = Entry(Contact(own, "10.0.0.9", 9), target.now)
    with pytest.raises(FindingError, match="itself"):
        target.check()


def test_check_decode_reports_a_decoder_that_raises_something_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import benchmarks.fuzz as fuzz_module  # noqa: PLC0415

    def broken(data: bytes, auth: Any) -> Any:
        raise IndexError("boom")

    monkeypatch.setattr(fuzz_module, "decode_datagram", broken)
    with pytest.raises(FindingError, match="IndexError"):
        fuzz_module.check_decode(b"x" * 200, RECEIVER, FUZZ.signers[0])
    with pytest.raises(DecodeError):
        decode_datagram(b"x" * 200, RECEIVER)
