"""Persistence under a data dir: the SQLite record store, the key file, the saved routing
table, and a node process killed with SIGKILL that comes back with its id and its records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from enginenet import EngineNet, open_record

from nautilus_kad import KadConfig, Node
from nautilus_kad.core.config import KadConfig as CoreConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import GetDone
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId, key_id
from nautilus_kad.core.messages import Contact
from nautilus_kad.core.records import Record, make_immutable, make_signed, validate_record
from nautilus_kad.core.storage import MemoryStore
from nautilus_kad.persist import DataDir, DataDirLockedError, SqliteStore

START = 1_000_000.0


def _run(coro: Coroutine[Any, Any, None], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


# --- the SQLite store ---------------------------------------------------------------------


def test_sqlite_store_keeps_records_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite3"
    store = SqliteStore(path)
    records = [Record(NodeId(i), b"value %d" % i, 1000 + i, 60) for i in range(1, 6)]
    for i, record in enumerate(records):
        store.put(record, START, START + 100 + i)
    assert len(store) == 5
    assert store.remove(NodeId(5)) and not store.remove(NodeId(5))
    store.close()

    again = SqliteStore(path)
    assert len(again) == 4
    assert sorted(again.keys()) == [NodeId(i) for i in range(1, 5)]
    stored = again.get(NodeId(2), START)
    assert stored is not None
    assert stored.record == records[1]
    assert (stored.stored_at, stored.expires_at) == (START, START + 101)
    assert again.get(NodeId(9), START) is None
    # Expired records are invisible at once and swept by expire().
    assert again.get(NodeId(1), START + 100) is None
    assert sorted(again.expire(START + 101.5)) == [NodeId(1), NodeId(2)]
    assert len(again) == 2
    again.close()


def test_sqlite_store_runs_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.put(Record(NodeId(1), b"v", 1, 60), START, START + 60)
    with sqlite3.connect(tmp_path / "db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1
    store.close()
    with pytest.raises(ValueError):
        SqliteStore(tmp_path / "db2", synchronous="OFF")


def test_sqlite_store_saves_peers_and_published_records(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    peers = [(Contact(NodeId(i), "127.0.0.1", 4000 + i), float(i)) for i in range(1, 4)]
    store.save_peers(peers)
    assert [c.port for c in store.load_peers()] == [4003, 4002, 4001]  # most recent first
    assert len(store.load_peers(limit=2)) == 2
    record = Record(NodeId(7), b"mine", 5000, 600)
    store.add_published(record, 600)
    assert store.load_published() == [(record, 600)]
    store.save_published([])
    assert store.load_published() == []
    store.close()


def test_an_engine_on_a_persistent_store_serves_and_republishes_what_it_held(
    tmp_path: Path,
) -> None:
    config = CoreConfig(k=4, republish_interval=600.0)
    net = EngineNet(config=config, seed=3)
    store = SqliteStore(tmp_path / "db")
    keeper = net.add(store=store)
    others = [net.add() for _ in range(5)]
    for other in others:
        net.join(other, keeper)
    key = NodeId.random(net.rng)
    keeper.put(net.record(key, b"durable"), net.now)
    net.deliver()
    assert store.get(key, net.now) is not None
    identity = keeper.identity
    store.close()

    # The "process" is gone; a new engine opens the same database.
    net.kill(keeper)
    for other in others:  # make it the only holder
        other.store.remove(key)
    reopened = SqliteStore(tmp_path / "db")
    restarted = net.add(identity=identity, store=reopened)
    net.join(restarted, others[0])
    reader = others[1]
    reader.get(key, net.now)
    net.deliver()
    (got,) = net.take(reader, GetDone)
    assert isinstance(got, GetDone) and got.record is not None
    assert got.record.value == b"durable"
    # Its republish timer was restored from the stored receipt time: it puts the record
    # back on k nodes without anyone asking.
    net.advance(config.republish_interval)
    assert len(net.holders(key)) >= config.k
    reopened.close()


def test_a_restart_skips_expired_records_and_spreads_overdue_republishes() -> None:
    """What an engine finds in its store at start-up: a record that expired while the node
    was down is not held (no size, no timer); one whose republish fell due while it was down
    is republished within ``repair_delay`` (spread, not all at once); a recent one keeps its
    regular time, a republish interval after it was stored."""
    config = CoreConfig(republish_interval=600.0, republish_jitter=0.0, repair_delay=30.0)
    store = MemoryStore()
    expired = open_record(b"expired while down", b"v", ttl=100)
    overdue = open_record(b"overdue", b"v", ttl=86_400)
    recent = open_record(b"recent", b"v", ttl=86_400)
    store.put(expired, 0.0, 100.0)
    store.put(overdue, 0.0, 86_400.0)
    store.put(recent, 900.0, 86_400.0)
    now = 1_000.0
    engine = KadEngine(
        Identity.generate(random.Random(5)),
        config=config,
        rng=random.Random(6),
        now=now,
        store=store,
    )
    assert expired.key not in engine.holdings.held
    assert engine.replicator.schedule.get(expired.key) is None
    assert {overdue.key, recent.key} <= set(engine.holdings.held.all())
    due = engine.replicator.schedule.get(overdue.key)
    assert due is not None and now <= due.due <= now + config.repair_delay
    regular = engine.replicator.schedule.get(recent.key)
    assert regular is not None and regular.due == 900.0 + config.republish_interval


# --- the data directory -------------------------------------------------------------------


def test_the_key_file_is_private_and_the_id_stable(tmp_path: Path) -> None:
    with DataDir(tmp_path / "node") as data_dir:
        first = data_dir.identity()
        mode = stat.S_IMODE(os.stat(data_dir.key_path).st_mode)
        assert mode == 0o600
    with DataDir(tmp_path / "node") as data_dir:
        assert data_dir.identity().node_id == first.node_id


def test_a_data_dir_is_used_by_one_process_at_a_time(tmp_path: Path) -> None:
    first = DataDir(tmp_path)
    with pytest.raises(DataDirLockedError, match="in use"):
        DataDir(tmp_path)
    first.close()
    DataDir(tmp_path).close()


# --- nodes on real sockets ----------------------------------------------------------------

FAST = KadConfig(request_timeout=1.0, max_soft_timeout=1.0, initial_rtt=0.1)


def test_a_restarted_node_keeps_its_id_records_and_peers(tmp_path: Path) -> None:
    async def scenario() -> None:
        seed = await Node.start(config=FAST)
        others = [await Node.start(bootstrap=[seed.address], config=FAST) for _ in range(4)]
        everyone = [seed, *others]
        try:
            node = await Node.start(bootstrap=[seed.address], config=FAST, data_dir=tmp_path)
            node_id = node.node_id
            for i in range(10):
                await node.put(b"key %d" % i, b"value %d" % i)
            assert len(node.engine.store) == 10
            assert len(node.engine.published()) == 10
            await node.stop(handoff=False)

            # No bootstrap address: it rejoins through the peers it saved.
            again = await Node.start(config=FAST, data_dir=tmp_path)
            everyone.append(again)
            assert again.node_id == node_id
            assert len(again.routing_table) >= 4
            assert len(again.engine.store) == 10
            assert len(again.engine.published()) == 10
            # And it serves them: the others forget their copies, then read through it.
            for other in everyone[:-1]:
                for i in range(10):
                    other.engine.store.remove(key_id(b"key %d" % i))
            for i in range(10):
                assert await seed.get(b"key %d" % i) == b"value %d" % i
        finally:
            for n in everyone:
                await n.stop(handoff=False)

    _run(scenario())


def test_a_data_dir_node_with_no_reachable_peer_still_starts(tmp_path: Path) -> None:
    async def scenario() -> None:
        seed = await Node.start(config=FAST)
        node = await Node.start(bootstrap=[seed.address], config=FAST, data_dir=tmp_path)
        await node.stop(handoff=False)
        await seed.stop(handoff=False)
        lonely = await Node.start(config=FAST, data_dir=tmp_path)  # saved peer is dead
        try:
            assert len(lonely.routing_table) == 0
        finally:
            await lonely.stop()

    _run(scenario())


_CHILD = """
import asyncio, json, sys
from nautilus_kad import KadConfig, Node

async def main() -> None:
    config = KadConfig(request_timeout=1.0, max_soft_timeout=1.0, initial_rtt=0.1)
    node = await Node.start("127.0.0.1", 0, bootstrap=sys.argv[2:], config=config,
                            data_dir=sys.argv[1])
    info = {"node_id": node.node_id.hex(), "port": node.address[1],
            "records": len(node.engine.store), "peers": len(node.routing_table)}
    print(json.dumps(info), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def _child(data_dir: Path, *bootstrap: str) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(data_dir), *bootstrap,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "the child node printed nothing"
        yield proc, json.loads(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.integration
def test_a_node_killed_with_sigkill_comes_back_with_its_id_and_records(tmp_path: Path) -> None:
    keys = [b"survivor %d" % i for i in range(30)]

    async def scenario() -> None:
        async with await Node.start(config=FAST) as seed:
            host, port = seed.address
            async with _child(tmp_path, f"{host}:{port}") as (proc, info):
                child_id = NodeId.from_hex(info["node_id"])
                assert info["records"] == 0
                for key in keys:  # two nodes: both hold every record
                    result = await seed.put(key, key.upper())
                    assert child_id in {c.node_id for c in result.stored_on}
                proc.send_signal(signal.SIGKILL)
                assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
            # The seed forgets its copies: from now on only the child's disk has them.
            for key in keys:
                seed.engine.store.remove(key_id(key))

            # Restarted without a bootstrap address (and on another port).
            async with _child(tmp_path) as (proc, info):
                assert NodeId.from_hex(info["node_id"]) == child_id
                assert info["records"] == len(keys)
                assert info["peers"] == 1  # it rejoined through the seed it had saved
                async with await Node.start(bootstrap=[seed.address], config=FAST) as reader:
                    for key in keys:
                        assert await reader.get(key) == key.upper()

    _run(scenario(), timeout=90)


# --- layering -----------------------------------------------------------------------------


def test_persistence_stays_outside_the_sans_io_core() -> None:
    """core never reaches the database; persist depends on core only (not on a driver)."""
    import ast  # noqa: PLC0415

    src = Path(__file__).resolve().parents[1] / "src" / "nautilus_kad"

    def imported(path: Path) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
        return names

    for path in (src / "core").glob("*.py"):
        bad = {n for n in imported(path) if "persist" in n or n in ("sqlite3", "fcntl")}
        assert not bad, f"{path.name} imports {bad}"
    for path in (src / "persist").glob("*.py"):
        bad = {n for n in imported(path) if n.lstrip(".").split(".")[0] in ("aio", "sim", "cli")}
        assert not bad, f"persist/{path.name} imports {bad}"


def test_sqlite_store_keeps_signed_and_immutable_records(tmp_path: Path) -> None:
    signed = make_signed(Identity.generate(), b"name", b"value", 3, 600)
    immutable = make_immutable(b"content", 600)
    store = SqliteStore(tmp_path / "records.db")
    store.put(signed, 1.0, 1000.0)
    store.put(immutable, 1.0, 1000.0)
    store.close()
    reopened = SqliteStore(tmp_path / "records.db")
    for record in (signed, immutable):
        stored = reopened.get(record.key, 2.0)
        assert stored is not None and stored.record == record
        validate_record(stored.record, CoreConfig())
    reopened.close()
