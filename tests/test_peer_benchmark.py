"""The benchmark against bmuller/kademlia (``python -m benchmarks.peer``) and the one-request
FIND_NODE it measures through nautilus-kad's client API (``Node.find_node_at``).

Only that they run and report what they measured: no timing is asserted.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from netutil import LoopRunner, dead_address, describe_loop_errors

from nautilus_kad import KadConfig, Node, NodeId, QueryError

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "peer_worker.py"

pytestmark = pytest.mark.integration

FAST = KadConfig(request_timeout=0.5, max_soft_timeout=0.5, initial_rtt=0.1)


def test_find_node_at_asks_one_node_only() -> None:
    async def scenario() -> None:
        seed = await Node.start()
        others = [await Node.start(bootstrap=[seed.address]) for _ in range(6)]
        client = await Node.start(config=FAST, client_mode=True)
        try:
            target = NodeId.random(random.Random(7))
            sent_before = {n.node_id: n.stats.get("rx.request.FIND_NODE", 0) for n in others}
            contacts = await client.find_node_at(seed.address, target)
            # The seed's table: the six that joined through it, nearest to the target first.
            assert {c.node_id for c in contacts} == {n.node_id for n in others}
            distances = [c.node_id ^ target for c in contacts]
            assert distances == sorted(distances)
            # Nobody else was asked: one request, not a lookup.
            for node in others:
                assert node.stats.get("rx.request.FIND_NODE", 0) == sent_before[node.node_id]
            start = time.monotonic()
            with pytest.raises(QueryError):
                await client.find_node_at(dead_address(), target)
            assert time.monotonic() - start <= FAST.request_timeout + 1.0
        finally:
            for node in [client, *others, seed]:
                await node.stop(handoff=False)

    with LoopRunner() as runner:
        runner.run(scenario(), timeout=30)
        assert not runner.loop_errors, describe_loop_errors(runner.loop_errors)


def _worker(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(WORKER), "--lib", "nautilus", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_network_worker_measures_every_phase() -> None:
    result = _worker(
        "--scenario", "network", "--nodes", "12", "--puts", "4", "--gets", "8",
        "--window", "4", "--kill-gets", "4", "--kill-window", "4",
    )  # fmt: skip
    assert result["nodes"] == 12
    assert result["join_p50_ms"] > 0 and result["datagrams_per_join"] > 0
    assert result["rss_per_node_joined"] != 0
    phases = result["phases"]
    assert set(phases) == {
        "put_seq", "get_seq", "put_conc", "get_conc", "get_after_30", "get_after_50",
    }  # fmt: skip
    for name in ("put_seq", "get_seq", "put_conc", "get_conc"):
        assert phases[name]["success"] == 1.0, (name, phases[name])


def test_unsigned_experiment_runs_and_is_for_nautilus_only() -> None:
    result = _worker(
        "--scenario", "network", "--nodes", "8", "--puts", "2", "--gets", "4",
        "--window", "2", "--kill-gets", "2", "--kill-window", "2", "--unsigned-experiment",
    )  # fmt: skip
    assert result["phases"]["get_seq"]["success"] == 1.0
    refused = subprocess.run(
        [sys.executable, str(WORKER), "--lib", "kademlia", "--scenario", "network",
         "--unsigned-experiment"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "nautilus only" in refused.stderr


def test_free_signatures_still_refuse_a_forged_tag() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from benchmarks.peer_worker import free_signatures\n"
        "from nautilus_kad.core.auth import Authenticator\n"
        "from nautilus_kad.core.identity import Identity\n"
        "free_signatures()\n"
        "a = Authenticator(Identity.generate())\n"
        "tag = a.sign(b'payload')\n"
        "key = a.identity.public_key\n"
        "assert a.verify(key, b'payload', tag) == a.identity.node_id\n"
        "assert a.verify(key, b'payloaD', tag) is None\n"
        "assert a.verify(key, b'payload', bytes(64)) is None\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def _peer_python(tmp: Path) -> Path:
    """A venv with kademlia 2.2.3 from PyPI, made the way the benchmark makes it."""
    from rich.console import Console  # noqa: PLC0415

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.peer import ensure_peer_venv  # noqa: PLC0415
    finally:
        sys.path.remove(str(ROOT))
    try:
        return ensure_peer_venv(tmp / "peer-venv", Console(stderr=True))
    except subprocess.CalledProcessError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot install the peer from PyPI here: {exc}")


@pytest.mark.slow
def test_peer_benchmark_prints_one_table_with_both_libraries(tmp_path: Path) -> None:
    _peer_python(tmp_path)  # installed once, then reused by the command below
    out = tmp_path / "peer.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.peer", "--quick", "--sizes", "10",
            "--puts", "4", "--gets", "8", "--kill-gets", "2", "--duration", "0.5",
            "--fillers", "3", "--venv", str(tmp_path / "peer-venv"), "--json", str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = done.stdout
    for row in ("join p50, N = 10", "get p50, sequential", "right after 50% killed"):
        assert row in text, text
    assert "PING answered per second" in text and "FIND_NODE answered per second" in text
    assert "server CPU per request" in text and "client CPU per request" in text
    data = json.loads(out.read_text())
    for lib in ("kademlia", "nautilus"):
        assert data["network-10"][lib]["phases"]["get_seq"]["success"] == 1.0
        for kind in ("PING", "FIND_NODE"):
            rpc = data[f"rpc-{kind}"][lib]
            assert rpc["answered"] > 0, (kind, lib)
            assert 0 < rpc["client_cpu_per_request_us"] < 1e6, (kind, lib)
    assert data["rpc-FIND_NODE"]["nautilus"]["mean_contacts"] >= 3
    assert data["rpc-FIND_NODE"]["kademlia"]["mean_contacts"] >= 3
