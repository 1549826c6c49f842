"""The large-value format (core/blob.py) and the fetch and store plans (core/blobflow.py).

Pure: trees are built and fetched from a dict standing in for the network's immutable
records, so every malformed piece can be crafted directly.
"""

from __future__ import annotations

import hashlib
import random

import msgpack
import pytest

from nautilus_kad.core.blob import (
    INNER_FANOUT,
    MAGIC,
    BlobConfig,
    BlobFormatError,
    MissingChunksError,
    build_tree,
    decode_manifest,
    encode_manifest,
    fanout,
    needs_blob,
    piece_key,
)
from nautilus_kad.core.blobflow import GetPlan, Lookup, Neighbourhoods, PutPlan, Store
from nautilus_kad.core.errors import ValueTooLargeError
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.limits import IMMUTABLE_VALUE_LIMIT, SIGNED_VALUE_LIMIT
from nautilus_kad.core.messages import Contact

CONFIG = BlobConfig()
ROOT_KEY = NodeId(12345)


def _value(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def _fetch_all(root_key: NodeId, root: bytes, pieces: dict[NodeId, bytes], cfg=CONFIG) -> bytes:
    plan = GetPlan(root_key, root, cfg)
    rounds = 0
    while not plan.done:
        rounds += 1
        assert rounds < 10_000
        batch = plan.next_fetches()
        assert batch and len(batch) <= cfg.in_flight
        for key in batch:
            plan.on_fetched(key, pieces.get(key))
    return plan.result()


def _tree(value: bytes, capacity: int = IMMUTABLE_VALUE_LIMIT) -> tuple[bytes, dict[NodeId, bytes]]:
    tree = build_tree(value, capacity, CONFIG)
    return tree.root, dict(tree.pieces)


@pytest.mark.parametrize("size", [1001, 30_000, 64 * 1024, 1 << 20])
def test_round_trip_and_every_piece_fits_a_record(size: int) -> None:
    value = _value(size)
    root, pieces = _tree(value)
    assert len(root) <= IMMUTABLE_VALUE_LIMIT
    assert all(len(p) <= IMMUTABLE_VALUE_LIMIT and piece_key(p) == k for k, p in pieces.items())
    assert _fetch_all(ROOT_KEY, root, pieces) == value


def test_signed_root_fits_a_signed_record_and_one_mib_needs_three_levels() -> None:
    value = _value(1 << 20)
    root, pieces = _tree(value, SIGNED_VALUE_LIMIT)
    assert len(root) <= SIGNED_VALUE_LIMIT
    assert decode_manifest(root, CONFIG.max_size).level == 2
    assert fanout(SIGNED_VALUE_LIMIT) < INNER_FANOUT
    assert _fetch_all(ROOT_KEY, root, pieces) == value


def test_repeated_content_is_fetched_once() -> None:
    value = b"\0" * 100_000
    root, pieces = _tree(value)
    assert len(pieces) < 10  # one distinct chunk, a few manifests
    assert _fetch_all(ROOT_KEY, root, pieces) == value


def test_small_values_stay_inline_unless_they_look_like_a_manifest() -> None:
    assert not needs_blob(b"x" * 1000, 1000)
    assert needs_blob(b"x" * 1001, 1000)
    assert needs_blob(MAGIC + b"hello", 1000)
    root, pieces = _tree(MAGIC + b"hello")
    assert _fetch_all(ROOT_KEY, root, pieces) == MAGIC + b"hello"


def test_over_the_limit_is_refused_when_writing_and_reading() -> None:
    with pytest.raises(ValueTooLargeError, match="over the limit"):
        build_tree(b"x" * (CONFIG.max_size + 1), 1000, CONFIG)
    root, _ = _tree(_value(200_000))
    with pytest.raises(BlobFormatError, match="over the limit of 100000"):
        decode_manifest(root, 100_000)


def test_missing_pieces_are_one_error_saying_how_much() -> None:
    value = _value(64 * 1024)
    root, pieces = _tree(value)
    chunk_keys = [k for k, p in pieces.items() if not p.startswith(MAGIC)]
    for key in chunk_keys[:3]:
        del pieces[key]
    with pytest.raises(MissingChunksError) as caught:
        _fetch_all(ROOT_KEY, root, pieces)
    assert caught.value.missing_pieces == 3
    assert caught.value.missing_bytes == 3000
    assert "3000 of 65536 bytes missing" in str(caught.value)


def test_a_chunk_with_the_wrong_hash_or_size_is_refused() -> None:
    value = _value(5000)
    root, pieces = _tree(value)
    key = next(iter(pieces))
    pieces[key] = pieces[key][:-1]  # truncated: wrong hash
    with pytest.raises(BlobFormatError, match="hash"):
        _fetch_all(ROOT_KEY, root, pieces)
    # a chunk of the right hash but not the size its manifest implies (another value's chunk)
    short = b"short chunk of another value"
    hashes = piece_key(short).to_bytes32() + b"\1" * 32
    bad_root = encode_manifest(0, 2000, 1000, hashes)
    with pytest.raises(BlobFormatError, match="implies 1000"):
        _fetch_all(ROOT_KEY, bad_root, {piece_key(short): short})
    # an oversized one: a full chunk where the manifest says the value ends sooner
    full = b"f" * 1000
    bad_root = encode_manifest(0, 500, 1000, piece_key(full).to_bytes32())
    with pytest.raises(BlobFormatError, match="1000 bytes where its manifest implies 500"):
        _fetch_all(ROOT_KEY, bad_root, {piece_key(full): full})


def test_manifests_with_wrong_lengths_levels_or_cycles_are_refused() -> None:
    def bad(data: bytes, match: str, pieces: dict[NodeId, bytes] | None = None) -> None:
        with pytest.raises(BlobFormatError, match=match):
            _fetch_all(ROOT_KEY, data, pieces or {})

    h = b"\7" * 32
    bad(encode_manifest(0, 3000, 1000, h * 2), "lists 2 children")
    bad(encode_manifest(9, 3000, 1000, h), "too deep")
    bad(encode_manifest(0, 30, 10, h * 3), "chunk size")
    bad(encode_manifest(0, 0, 1000, h), "empty")
    bad(MAGIC + msgpack.packb([1, 0, 1000, 1000]), "5 fields")
    bad(MAGIC + msgpack.packb([2, 0, 1000, 1000, h]), "version")
    bad(MAGIC + msgpack.packb([1, True, 1000, 1000, h]), "integer")
    bad(MAGIC + b"\xc1\xc1", "malformed")
    bad(b"plain", "not a manifest")
    bad(encode_manifest(0, 1000, 1000, ROOT_KEY.to_bytes32()), "refers to itself")
    # a child manifest whose length disagrees with its parent's
    child = encode_manifest(0, 1000, 1000, h)
    parent = encode_manifest(1, 40_000, 1000, piece_key(child).to_bytes32() * 2)
    bad(parent, "implies 30000", {piece_key(child): child})
    # a manifest where a chunk belongs, and a chunk where a manifest belongs
    chunk = b"c" * 1000
    bad(
        encode_manifest(1, 1000, 1000, piece_key(chunk).to_bytes32()),
        "not a manifest",
        {piece_key(chunk): chunk},
    )
    # a level-1 manifest listing a level-1 manifest (its own level): refused, as a cycle is
    inner = encode_manifest(1, 1000, 1000, h)
    outer = encode_manifest(1, 1000, 1000, piece_key(inner).to_bytes32())
    bad(outer, "level 1 under one of level 1", {piece_key(inner): inner})


def test_a_manifest_naming_an_ancestor_is_a_cycle() -> None:
    # SHA-256 makes a true cycle impossible to build, so the plan is fed a forged answer:
    # the record under the child key claims to be a manifest listing its own parent's key.
    child_key = NodeId(777)
    root = encode_manifest(1, 2000, 1000, child_key.to_bytes32())
    plan = GetPlan(ROOT_KEY, root, CONFIG)
    (key,) = plan.next_fetches()
    looping = encode_manifest(0, 2000, 1000, child_key.to_bytes32() + ROOT_KEY.to_bytes32())
    with pytest.raises(BlobFormatError, match="refers to itself"):
        plan.on_fetched(key, looping)


def test_fetches_are_bounded_and_manifests_come_first() -> None:
    cfg = BlobConfig(in_flight=8)
    root, pieces = _tree(_value(1 << 20))
    plan = GetPlan(ROOT_KEY, root, cfg)
    first = plan.next_fetches()
    assert all(pieces[k].startswith(MAGIC) for k in first)
    assert plan.next_fetches() == []  # nothing more until answers come back
    for key in first:
        plan.on_fetched(key, pieces[key])
    assert len(plan.next_fetches()) == 8


# --- the store plan --------------------------------------------------------------------------


def _network(n: int, seed: int = 3) -> list[Contact]:
    rng = random.Random(seed)
    return [Contact(NodeId(rng.getrandbits(256)), "127.0.0.1", 1000 + i) for i in range(n)]


def _true_closest(nodes: list[Contact], target: NodeId, k: int) -> list[Contact]:
    return sorted(nodes, key=lambda c: int(c.node_id) ^ int(target))[:k]


@pytest.mark.parametrize("n", [10, 200, 2000])
def test_put_plan_stores_every_piece_on_its_true_k_closest_with_few_lookups(n: int) -> None:
    k = 20
    nodes = _network(n)
    keys = [
        NodeId(int.from_bytes(hashlib.sha256(bytes([i, j])).digest(), "big"))
        for i in range(5)
        for j in range(210)
    ]
    plan = PutPlan(keys, k, in_flight=64)
    stored: dict[int, tuple[Contact, ...]] = {}
    rounds = 0
    while not plan.done:
        rounds += 1
        assert rounds < 10_000
        actions = plan.next_actions()
        assert actions and plan.busy <= 64
        for action in actions:
            if isinstance(action, Lookup):
                plan.on_lookup(action.target, _true_closest(nodes, action.target, k))
            else:
                assert isinstance(action, Store)
                stored[action.index] = action.contacts
                plan.on_stored(action.index, len(action.contacts))
    for index, key in enumerate(keys):
        assert set(stored[index]) == set(_true_closest(nodes, key, k)), index
    assert plan.acks() == [min(k, n)] * len(keys)
    # about 2 N / k lookups, far fewer than one per piece
    assert plan.lookups_run <= max(4, 4 * n // k), plan.lookups_run


def test_neighbourhoods_prove_only_what_a_lookup_saw() -> None:
    nodes = _network(400)
    hoods = Neighbourhoods(20)
    target = nodes[0].node_id
    hoods.learn(target, _true_closest(nodes, target, 20))
    assert hoods.gap(target, hoods.closest(target)) is not None  # the far side is unknown
    far = NodeId(int(target) ^ (1 << 255))
    assert hoods.gap(far, hoods.closest(far)) is not None


def test_a_piece_few_nodes_acknowledged_is_sent_again_at_most_three_times() -> None:
    nodes = _network(50)
    keys = [NodeId(1 << 200), NodeId(2 << 200)]
    plan = PutPlan(keys, 20, in_flight=8)
    sends: dict[int, int] = {0: 0, 1: 0}
    while not plan.done:
        for action in plan.next_actions():
            if isinstance(action, Lookup):
                plan.on_lookup(action.target, _true_closest(nodes, action.target, 20))
            else:
                assert isinstance(action, Store)
                sends[action.index] += 1
                # piece 0: a loaded network answers 3 of 20 the first time, then 15
                acks = (3 if sends[0] == 1 else 15) if action.index == 0 else 0
                plan.on_stored(action.index, acks)
    assert sends == {0: 2, 1: 3}
    assert plan.acks() == [15, 0] and plan.retries == 3


def test_a_piece_not_found_is_asked_for_again_before_it_counts_as_missing() -> None:
    value = _value(3000)
    root, pieces = _tree(value)
    plan = GetPlan(ROOT_KEY, root, CONFIG)
    asked: dict[NodeId, int] = {}
    while not plan.done:
        for key in plan.next_fetches():
            asked[key] = asked.get(key, 0) + 1
            # every piece is missed twice (holders too slow), then found
            plan.on_fetched(key, pieces[key] if asked[key] == 3 else None)
    assert plan.result() == value
    assert set(asked.values()) == {3}
