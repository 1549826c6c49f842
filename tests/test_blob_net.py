"""Values larger than a datagram on real loopback UDP (issue 15): the same API as small
values, verified end to end, a bad chunk penalised and read from another replica, missing
pieces reported, publishing stopped piece by piece.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from netutil import start_network, stop_all

from nautilus_kad import KadConfig, Node, QueryError, RecordKind, ValueTooLargeError
from nautilus_kad.core.blob import (
    MAGIC,
    BlobConfig,
    BlobFormatError,
    MissingChunksError,
    build_tree,
    decode_manifest,
)
from nautilus_kad.core.ids import key_id
from nautilus_kad.core.limits import OPEN_VALUE_LIMIT
from nautilus_kad.core.records import Record

pytestmark = pytest.mark.integration

CONFIG = KadConfig(k=6)


def _run(scenario: object, timeout: float = 120) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))  # type: ignore[arg-type]


def _value(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def test_large_values_of_every_kind_round_trip_and_small_ones_stay_inline() -> None:
    async def scenario() -> None:
        nodes = await start_network(12, config=CONFIG)
        try:
            writer, reader = nodes[3], nodes[9]
            big = _value(64 * 1024)
            seen: list[tuple[int, int]] = []
            result = await writer.put(b"big", big, progress=lambda d, t: seen.append((d, t)))
            assert result.pieces == 66 + 3  # 66 chunks, 3 level-0 manifests
            assert result.min_piece_acks == CONFIG.k
            assert seen[-1] == (sum(len(p) for _, p in _tree(big)), seen[-1][1])
            got: list[tuple[int, int]] = []
            assert await reader.get(b"big", progress=lambda d, t: got.append((d, t))) == big
            assert got[-1] == (len(big), len(big))
            # the record under the key holds the root manifest; a small value is inline
            raw = await reader.get_record(b"big")
            assert raw.record is not None and raw.record.value.startswith(MAGIC)
            small = await writer.put(b"small", b"s" * OPEN_VALUE_LIMIT)
            assert small.pieces == 0
            raw = await reader.get_record(b"small")
            assert raw.record is not None and raw.record.value == b"s" * OPEN_VALUE_LIMIT
            # a small value that looks like a manifest is stored as a tree, read back as is
            await writer.put(b"tricky", MAGIC + b"not a manifest")
            assert await reader.get(b"tricky") == MAGIC + b"not a manifest"

            cid = await writer.put_immutable(big)
            assert await reader.get_immutable(cid) == big
            await writer.put_signed(b"profile", big)
            signed = await reader.get_signed(writer.public_key, b"profile")
            assert signed is not None and signed.value == big and signed.seq == 1
            newer = big[::-1]
            await writer.put_signed(b"profile", newer)
            signed = await reader.get_signed(writer.public_key, b"profile")
            assert signed is not None and signed.value == newer and signed.seq == 2

            with pytest.raises(ValueTooLargeError):
                await writer.put(b"huge", b"x" * (writer.blob_config.max_size + 1))
        finally:
            await stop_all(nodes)

    _run(scenario())


def _tree(value: bytes) -> tuple[tuple[object, bytes], ...]:
    return build_tree(value, OPEN_VALUE_LIMIT, BlobConfig()).pieces


def test_a_bad_chunk_counts_against_its_holder_and_another_replica_serves() -> None:
    async def scenario() -> None:
        nodes = await start_network(10, config=CONFIG)
        try:
            writer = nodes[1]
            value = _value(5000, seed=3)
            await writer.put(b"doc", value)
            key, chunk = build_tree(value, OPEN_VALUE_LIMIT, BlobConfig()).pieces[0]
            holders = sorted(
                (n for n in nodes if n.engine.store.get(key, 0) is not None),
                key=lambda n: n.node_id ^ key,
            )
            assert len(holders) >= 4
            reader = next(n for n in nodes if n not in holders)
            # every holder but the farthest serves a truncated chunk under the chunk's key
            # (their stores are written directly: honest nodes would have refused it), so the
            # reader's first requests all meet a bad copy
            liars = holders[:-1]
            forged = Record(key, chunk[:-1], 0, 3600, RecordKind.IMMUTABLE)
            for liar in liars:
                liar.engine.store.put(forged, 0, 1e12)
            before = reader.engine.stats["get.invalid_value"]
            assert await reader.get(b"doc") == value
            assert reader.engine.stats["get.invalid_value"] > before
            assert any(reader.engine.strikes.get(liar.node_id, 0) for liar in liars)
        finally:
            await stop_all(nodes)

    _run(scenario())


def test_missing_pieces_fail_with_how_much_and_a_bad_tree_is_refused() -> None:
    async def scenario() -> None:
        nodes = await start_network(8, config=CONFIG)
        try:
            writer, reader = nodes[2], nodes[6]
            value = _value(10_000, seed=5)
            await writer.put(b"doc", value)
            tree = build_tree(value, OPEN_VALUE_LIMIT, BlobConfig())
            for key, _ in tree.pieces[:2]:
                for node in nodes:
                    node.engine.store.remove(key)
            with pytest.raises(MissingChunksError, match="2000 of 10000 bytes missing"):
                await reader.get(b"doc")
            # a root that claims more than the reader's limit is refused before any fetch
            small_reader = await Node.start(
                bootstrap=[nodes[0].address], config=CONFIG, blob_config=BlobConfig(max_size=5000)
            )
            try:
                with pytest.raises(BlobFormatError, match="over the limit of 5000"):
                    await small_reader.get(b"doc")
            finally:
                await small_reader.stop(handoff=False)
            assert issubclass(MissingChunksError, QueryError)
        finally:
            await stop_all(nodes)

    _run(scenario())


def test_unpublish_stops_republishing_every_piece() -> None:
    async def scenario() -> None:
        nodes = await start_network(6, config=CONFIG)
        try:
            writer = nodes[4]
            value = _value(40_000, seed=9)
            result = await writer.put(b"doc", value)
            published = {r.key for r, _ in writer.engine.published()}
            root = decode_manifest(
                next(r for r, _ in writer.engine.published() if r.key == key_id(b"doc")).value,
                writer.blob_config.max_size,
            )
            assert len(published) == result.pieces + 1
            assert set(root.children) <= published
            # a second value sharing the first 20 000 bytes (20 identical chunks)
            other = value[:20_000] + _value(20_000, seed=10)
            second = await writer.put(b"other", other)
            assert writer.unpublish(b"doc")
            left = {r.key for r, _ in writer.engine.published()}
            assert key_id(b"doc") not in left and key_id(b"other") in left
            assert len(left) == second.pieces + 1  # every piece of the other value stays
            assert writer.unpublish(b"other")
            assert writer.engine.published() == []
        finally:
            await stop_all(nodes)

    _run(scenario())


def test_the_benchmark_runs_and_prints_its_table() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    args = ["--nodes", "8", "--sizes", "1024,5000", "--loop", "asyncio"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.blobs", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| 1 KiB |" in result.stdout and "| 4 KiB |" in result.stdout
    assert "| yes |" in result.stdout


def test_per_source_quotas_still_bound_what_a_large_put_makes_others_store() -> None:
    quota = 40_000
    config = KadConfig(k=6, max_bytes_per_source=quota)

    async def scenario() -> None:
        # every node is 127.0.0.1, so on loopback the quota bounds the whole network's puts
        nodes = await start_network(6, config=config)
        try:
            writer = nodes[2]
            result = await writer.put(b"big", _value(64 * 1024), republish=False)
            assert result.min_piece_acks >= 1  # the writer keeps its own copy
            others = [n for n in nodes if n is not writer]
            assert sum(n.stats["store.rejected.quota"] for n in others) > 0
            for node in others:
                assert node.stats["store.bytes"] <= quota
        finally:
            await stop_all(nodes)

    _run(scenario())
