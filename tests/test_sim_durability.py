"""Issue 4's durability bounds, shown in the simulator at a size that fits CI.

The full-size runs (1000 nodes, 1000 records, 24 virtual hours of churn) are
``python -m benchmarks.durability``; these hold the same bounds on smaller networks, with the
simulator's default engine configuration:

* half the nodes crash at once, without handoff: after one repair period (the republish
  interval) at least 99.9% of the records are readable and at least 99% are back on k live
  nodes;
* continuous churn with 30-minute mean sessions, every departure a crash: at least 99.9% of
  gets succeed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nautilus_kad.sim import default_sim_config
from nautilus_kad.sim.durability import (
    ChurnSpec,
    MassKillSpec,
    ReplicaCounts,
    run_churn,
    run_mass_kill,
)

ROOT = Path(__file__).resolve().parent.parent
K = default_sim_config().k


# Wall-clock limits above the suite's default: these take 10-25 s of CPU, and CI shares its
# cores.
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_half_the_nodes_crash_and_one_repair_period_restores_the_records() -> None:
    result = run_mass_kill(MassKillSpec(nodes=250, records=250, seed=3))
    assert result.joined == 250
    assert result.stored == 250
    assert result.killed == 125
    # Before the kill every record sat on k nodes; the kill took about half of each set.
    assert result.before.on_k_share >= 0.99
    assert result.after_kill.on_k_share <= 0.05
    assert result.after_kill.quantile(50) <= 0.75 * K
    # One repair period later (the republish interval, 1 h by default):
    assert result.repair_period == default_sim_config().republish_interval
    assert result.readable_share >= 0.999
    assert result.back_on_k_share >= 0.99
    assert result.after_repair.lost == 0
    assert len(result.timeline) == 4 and result.timeline[-1] is result.after_repair
    assert result.timeline[-1].at - result.after_kill.at == pytest.approx(result.repair_period)
    assert result.reads_lost == 0
    # The repair was the engine's: holders found the dead and re-replicated.
    stats = result.engine_stats
    assert stats["repair.topups"] > 0
    assert stats["replicate.stores"] > 0
    assert 0 < result.datagrams_repair < result.datagrams_total


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_gets_succeed_under_continuous_churn() -> None:
    spec = ChurnSpec(nodes=150, records=150, hours=2.0, mean_session=1800.0, gets=800, seed=5)
    result = run_churn(spec)
    assert result.stored >= 149
    # The population turned over about four times (2 h of 30-minute sessions) and held.
    assert result.departures >= 3 * spec.nodes
    assert abs(result.rows[-1].live - spec.nodes) <= 0.2 * spec.nodes
    assert result.gets >= 0.95 * spec.gets
    assert result.success_share >= 0.999, result.failures
    assert all(row.replicas.lost == 0 for row in result.rows)
    assert result.rows[-1].replicas.minimum >= K // 2


def test_replica_counts_summarise_a_distribution() -> None:
    counts = ReplicaCounts(0.0, (0, 3, 3, 20, 25), k=20)
    assert counts.histogram == {0: 1, 3: 2, 20: 1, 25: 1}
    assert counts.lost == 1
    assert counts.on_k_share == pytest.approx(0.4)
    assert counts.minimum == 0
    assert counts.brief() == "0/0/3/25/25"


def test_specs_refuse_impossible_runs() -> None:
    with pytest.raises(ValueError, match="kill_fraction"):
        MassKillSpec(kill_fraction=1.0)
    with pytest.raises(ValueError, match="too short"):
        ChurnSpec(hours=0.25)


@pytest.mark.integration
def test_the_benchmark_prints_both_tables(tmp_path: Path) -> None:
    out = tmp_path / "durability.json"
    args = ["--nodes", "40", "--records", "20", "--hours", "0.5", "--gets", "20"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.durability", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mass kill: 40 nodes, 20 records, 20 killed at once" in result.stdout
    assert "churn: 40 nodes" in result.stdout
    data = json.loads(out.read_text())
    assert data["masskill"]["stored"] == 20
    assert sum(data["masskill"]["before"].values()) == 20
    assert data["churn"]["gets"] + data["churn"]["gets_lost"] <= 20
