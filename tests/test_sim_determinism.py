"""Same seed and parameters, same run: digests agree across processes and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nautilus_kad.sim import ChurnModel, ScenarioSpec, run_scenario

SCENARIO = dict(nodes=120, lookups=80, puts=8, gets_per_put=2, loss=0.02, op_rate=20.0, trace=True)
"""Small but busy: loss, churn (below), puts and gets, every datagram hashed."""

CHILD = textwrap.dedent(
    """
    from nautilus_kad.sim import ChurnModel, ScenarioSpec, run_scenario
    spec = ScenarioSpec(seed={seed}, churn=ChurnModel(15.0), **{params!r})
    print(run_scenario(spec).digest)
    """
)


def digest_in_subprocess(seed: int, hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(seed=seed, params=SCENARIO)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return result.stdout.strip()


@pytest.mark.slow
def test_same_digest_across_processes_and_hash_seeds() -> None:
    first = digest_in_subprocess(7, "1")
    second = digest_in_subprocess(7, "4242")
    assert len(first) == 64
    assert first == second


@pytest.mark.slow
def test_in_process_digest_matches_and_depends_on_the_seed() -> None:
    spec = ScenarioSpec(seed=7, churn=ChurnModel(15.0), **SCENARIO)  # type: ignore[arg-type]
    result = run_scenario(spec)
    assert result.departures > 0 and result.arrivals > SCENARIO["nodes"]  # churn happened
    assert result.network.lost > 0
    assert result.digest == digest_in_subprocess(7, "99")
    other = run_scenario(ScenarioSpec(seed=8, churn=ChurnModel(15.0), **SCENARIO))  # type: ignore[arg-type]
    assert other.digest != result.digest
