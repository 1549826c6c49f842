"""The benchmark script runs end to end in its quickest form and prints its table.

Only that it runs: no timing is asserted (benchmarks report, they do not judge).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

TINY = ["--quick", "--duration", "1", "--fillers", "25", "--nodes", "20"]
TINY += ["--puts", "10", "--gets", "20"]


Completed = subprocess.CompletedProcess[str]


def _run(args: list[str], tmp_path: Path) -> tuple[Completed, dict[str, Any]]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, *args, *TINY, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads(out.read_text())


def test_benchmark_script_prints_a_table(tmp_path: Path) -> None:
    result, data = _run(["benchmarks/run.py"], tmp_path)
    text = result.stdout
    assert "nautilus-kad benchmarks" in text
    for row in ("PING answered / s", "FIND_NODE answered / s", "get latency p50"):
        assert row in text, text
    assert "after half died" in text
    assert "≤ 0.6 ms" in text and "≥ 5,000" in text  # the §9 targets sit next to the numbers

    throughput = data["throughput"]
    assert throughput["error"] is None
    assert [(p["mode"], p["kind"]) for p in throughput["phases"]] == [
        ("signed", "PING"),
        ("signed", "FIND_NODE"),
        ("session", "PING"),
        ("session", "FIND_NODE"),
    ]
    assert "PING answered / s with sessions" in text
    assert all(p["answered"] > 0 for p in throughput["phases"])
    network = data["network"]
    assert network["nodes"] == 20
    assert network["gets"]["count"] == 20
    assert network["gets_after_failure"]["count"] == 20


def test_benchmark_module_entry_point(tmp_path: Path) -> None:
    result, data = _run(["-m", "benchmarks", "--only", "network"], tmp_path)
    assert "get latency p50" in result.stdout
    assert "throughput" not in data
    assert data["network"]["puts"]["count"] == 10


@pytest.mark.parametrize("size", [["--nodes", "8"], ["--sim", "40"]])
def test_memory_benchmark_prints_its_breakdown(tmp_path: Path, size: list[str]) -> None:
    out = tmp_path / "memory.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *size, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "routing table" in result.stdout and "RSS growth / node" in result.stdout
    (run,) = json.loads(out.read_text())
    assert run["nodes"] == int(size[1]) and run["rss_per_node"] > 0
    assert run["parts"]["routing table"][0] > 0  # the walk reaches each node's own state
