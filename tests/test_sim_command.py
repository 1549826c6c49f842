"""The ``sim`` command (sim/command.py), run in-process through click."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nautilus_kad.sim.command import sim_command

SMALL = ["--nodes", "60", "--lookups", "40", "--puts", "5", "--seed", "3", "--quiet"]


def test_prints_the_table_and_a_digest(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = CliRunner().invoke(sim_command, [*SMALL, "--json", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("join", "lookup", "put", "get", "success", "exact k", "digest", "not security"):
        assert word in result.output
    data = json.loads(out.read_text())
    assert data["spec"]["nodes"] == 60
    kinds = {(s["phase"], s["kind"]): s for s in data["summaries"]}
    assert kinds["workload", "lookup"]["count"] == 40
    assert kinds["workload", "get"]["count"] == 5
    again = CliRunner().invoke(sim_command, [*SMALL, "--json", "-"])
    assert again.exit_code == 0
    assert json.loads(again.stdout)["digest"] == data["digest"]


def test_churn_loss_and_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        sim_command,
        [*SMALL, "--loss", "0.05", "--churn", "20s", "--duration", "30s", "--latency",
         "uniform:5ms,50ms", "--k", "8", "--alpha", "2", "--join-refresh"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "churn:" in result.output and "departures" in result.output


@pytest.mark.parametrize(
    "args",
    [["--latency", "gauss:3ms"], ["--churn", "soon"], ["--loss", "1.0"], ["--nodes", "0"]],
)
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    result = CliRunner().invoke(sim_command, [*SMALL, *args])
    assert result.exit_code == 2
    assert "Error" in result.output


def test_plot_writes_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(sim_command, [*SMALL, "--plot", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    for name in ("sim-hops.png", "sim-latency-cdf.png", "sim-success-over-time.png"):
        png = tmp_path / "fig" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    result = CliRunner().invoke(sim_command, [*SMALL, "--plot", str(tmp_path)])
    assert result.exit_code == 2
    assert "nautilus-kad[plot]" in result.output
    assert not list(tmp_path.iterdir())
