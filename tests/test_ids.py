"""Properties of the 256-bit id space and the XOR metric (core/ids.py)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.ids import (
    ID_BITS,
    ID_BYTES,
    NodeId,
    bucket_index,
    common_prefix_length,
    distance,
    key_id,
    random_id_in_bucket,
)

MAX_ID = (1 << ID_BITS) - 1

ids = st.integers(min_value=0, max_value=MAX_ID).map(NodeId)


def _brute_cpl(a: int, b: int) -> int:
    """Common prefix length computed bit by bit, independently of the implementation."""
    bits_a = format(a, "0256b")
    bits_b = format(b, "0256b")
    n = 0
    for x, y in zip(bits_a, bits_b, strict=True):
        if x != y:
            break
        n += 1
    return n


# --- the metric --------------------------------------------------------------------------


@given(ids)
def test_distance_to_self_is_zero(a: NodeId) -> None:
    assert distance(a, a) == 0


@given(ids, ids)
def test_distance_is_symmetric(a: NodeId, b: NodeId) -> None:
    assert distance(a, b) == distance(b, a)


@given(ids, ids)
def test_distance_positive_for_distinct_ids(a: NodeId, b: NodeId) -> None:
    if a != b:
        assert distance(a, b) > 0
    else:
        assert distance(a, b) == 0


@given(ids, st.integers(min_value=0, max_value=ID_BITS - 1))
def test_distance_of_single_bit_flip(a: NodeId, bit: int) -> None:
    # Ids that differ in one bit: the near-equal case random pairs almost never hit.
    c = NodeId(a ^ (1 << bit))
    assert distance(a, c) == 1 << bit
    assert distance(a, c) > 0


@given(ids, ids, ids)
def test_unique_closest(a: NodeId, b: NodeId, c: NodeId) -> None:
    if distance(a, b) == distance(a, c):
        assert b == c


@given(ids, ids)
def test_unique_closest_with_equal_distance_forced(a: NodeId, b: NodeId) -> None:
    # Solve d(a, c) == d(a, b) for c: it must be b itself.
    c = NodeId(a ^ distance(a, b))
    assert distance(a, c) == distance(a, b)
    assert c == b


@given(ids, ids, ids)
def test_triangle_inequality(a: NodeId, b: NodeId, c: NodeId) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, ids)
def test_distance_stays_in_id_space(a: NodeId, b: NodeId) -> None:
    assert 0 <= distance(a, b) <= MAX_ID


# --- buckets -----------------------------------------------------------------------------


@given(ids, ids)
def test_bucket_index_is_common_prefix_length(a: NodeId, b: NodeId) -> None:
    if a == b:
        return
    expected = _brute_cpl(a, b)
    assert bucket_index(a, b) == expected
    assert common_prefix_length(a, b) == expected
    assert 0 <= expected < ID_BITS


@given(ids, st.integers(min_value=0, max_value=ID_BITS - 1))
def test_bucket_index_of_single_bit_flip(a: NodeId, bit_from_top: int) -> None:
    other = NodeId(a ^ (1 << (ID_BITS - 1 - bit_from_top)))
    assert bucket_index(a, other) == bit_from_top


def test_bucket_index_extremes() -> None:
    assert bucket_index(NodeId(0), NodeId(1)) == 255
    assert bucket_index(NodeId(0), NodeId(MAX_ID)) == 0
    assert bucket_index(NodeId(0), NodeId(1 << 255)) == 0
    assert bucket_index(NodeId(0), NodeId(1 << 254)) == 1
    assert common_prefix_length(NodeId(7), NodeId(7)) == ID_BITS


@given(ids)
def test_bucket_index_raises_for_own_id(a: NodeId) -> None:
    with pytest.raises(ValueError):
        bucket_index(a, a)
    with pytest.raises(ValueError):
        bucket_index(a, int(a))


@settings(max_examples=50)
@given(ids, st.integers(min_value=0, max_value=2**32))
def test_random_id_in_bucket_lands_in_bucket_for_every_index(own: NodeId, seed: int) -> None:
    rng = random.Random(seed)
    for index in range(ID_BITS):
        rid = random_id_in_bucket(own, index, rng)
        assert isinstance(rid, NodeId)
        assert 0 <= rid <= MAX_ID
        assert bucket_index(own, rid) == index
        assert _brute_cpl(own, rid) == index


def test_random_id_in_bucket_is_random_and_reproducible() -> None:
    own = NodeId.random(random.Random(5))
    a = [random_id_in_bucket(own, 3, random.Random(9)) for _ in range(3)]
    assert a[0] == a[1] == a[2]  # same seed, same id
    rng = random.Random(10)
    drawn = {random_id_in_bucket(own, 3, rng) for _ in range(50)}
    assert len(drawn) == 50  # 252 random bits: no repeats
    # The only id in bucket 255 is own with the last bit flipped.
    assert random_id_in_bucket(own, 255, rng) == own ^ 1


@pytest.mark.parametrize("index", [-1, ID_BITS, ID_BITS + 5])
def test_random_id_in_bucket_rejects_bad_index(index: int) -> None:
    with pytest.raises(ValueError):
        random_id_in_bucket(NodeId(0), index, random.Random(0))


# --- NodeId ------------------------------------------------------------------------------


@given(ids)
def test_node_id_bytes_round_trip(a: NodeId) -> None:
    raw = a.to_bytes32()
    assert len(raw) == ID_BYTES
    assert raw == int(a).to_bytes(32, "big")
    back = NodeId.from_bytes_exact(raw)
    assert back == a
    assert isinstance(back, NodeId)
    assert NodeId.from_hex(a.hex()) == a
    assert len(a.hex()) == 64
    assert a.short() == a.hex()[:8]


@given(st.binary(max_size=64).filter(lambda b: len(b) != ID_BYTES))
def test_from_bytes_exact_rejects_wrong_lengths(raw: bytes) -> None:
    with pytest.raises(ValueError):
        NodeId.from_bytes_exact(raw)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_from_bytes_exact_rejects_listed_lengths(length: int) -> None:
    with pytest.raises(ValueError):
        NodeId.from_bytes_exact(b"\x01" * length)


@pytest.mark.parametrize("value", [-1, -(2**255), 1 << ID_BITS, (1 << ID_BITS) + 1, 1 << 300])
def test_node_id_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        NodeId(value)


@pytest.mark.parametrize("value", [0, 1, MAX_ID])
def test_node_id_accepts_bounds(value: int) -> None:
    assert int(NodeId(value)) == value


def test_node_id_random_uses_injected_rng() -> None:
    a = NodeId.random(random.Random(42))
    b = NodeId.random(random.Random(42))
    c = NodeId.random(random.Random(43))
    assert a == b
    assert a != c


# --- key hashing -------------------------------------------------------------------------


@given(st.binary(max_size=256))
def test_key_id_is_sha256(key: bytes) -> None:
    expected = int.from_bytes(hashlib.sha256(key).digest(), "big")
    got = key_id(key)
    assert isinstance(got, NodeId)
    assert got == expected
    assert got.to_bytes32() == hashlib.sha256(key).digest()


def test_key_id_known_vector() -> None:
    assert key_id(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
