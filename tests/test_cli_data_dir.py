"""``nautilus-kad run --data-dir``: a node process killed with SIGKILL comes back with its id,
its records and its peers; a clean stop hands records on; one process per data dir.

Real subprocesses on 127.0.0.1, port 0; every wait is bounded (helpers from test_cli).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from test_cli import STARTUP_TIMEOUT, RunningNode, err, kad, out

pytestmark = pytest.mark.integration

DATA_DIR_LINE = re.compile(r"^data dir .*: (\d+) records?$")
REJOINED = re.compile(r"^rejoined through saved peers: (\d+) peers? in the routing table$")


@pytest.mark.slow
def test_run_with_a_data_dir_survives_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    seed = RunningNode.start()
    nodes = [seed]
    try:
        seed.wait_until_listening()
        first = RunningNode.start("--data-dir", str(data_dir), "--bootstrap", seed.address)
        nodes.append(first)
        first.wait_until_listening()
        assert first.wait_for_line(DATA_DIR_LINE, STARTUP_TIMEOUT).group(1) == "0"
        first.wait_for_line(re.compile(r"^joined through "), STARTUP_TIMEOUT)
        assert (data_dir / "node.key").stat().st_mode & 0o777 == 0o600
        for i in range(5):
            result = kad("put", f"key-{i}", f"value-{i}", "--bootstrap", first.address)
            assert result.returncode == 0, err(result)

        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

        # No --bootstrap: it finds its way back through the peer it saved.
        again = RunningNode.start("--data-dir", str(data_dir))
        nodes.append(again)
        again.wait_until_listening()
        assert again.node_id == first.node_id
        assert again.wait_for_line(DATA_DIR_LINE, STARTUP_TIMEOUT).group(1) == "5"
        assert again.wait_for_line(REJOINED, STARTUP_TIMEOUT).group(1) == "1"
        for i in range(5):
            result = kad("get", f"key-{i}", "--bootstrap", again.address)
            assert result.returncode == 0, err(result)
            assert out(result).strip() == f"value-{i}"
    finally:
        for node in nodes:
            node.stop()


def test_a_clean_stop_hands_records_on_and_a_data_dir_has_one_user(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    seed = RunningNode.start()
    nodes = [seed]
    try:
        seed.wait_until_listening()
        node = RunningNode.start("--data-dir", str(data_dir), "--bootstrap", seed.address)
        nodes.append(node)
        node.wait_until_listening()
        node.wait_for_line(re.compile(r"^joined through "), STARTUP_TIMEOUT)

        second = kad("run", "--port", "0", "--data-dir", str(data_dir))
        assert second.returncode == 1
        assert f"is in use by pid {node.process.pid}" in err(second)
        assert "Traceback" not in err(second)

        result = kad("put", "handed", "over", "--bootstrap", node.address)
        assert result.returncode == 0, err(result)
        assert node.stop(signal.SIGTERM) == 0
        assert any("left: 1 records handed on" in line for line in node.stderr_lines), (
            node.stderr_lines[-10:]
        )
    finally:
        for running in nodes:
            running.stop()


def test_demo_shows_replicas_dropping_and_coming_back() -> None:
    result = kad("demo", "--nodes", "30", "--values", "10", "--seed", "11", timeout=120)
    assert result.returncode == 0, out(result) + err(result)
    text = out(result)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    replicas = next(v for k, v in rows.items() if k.startswith("replicas per value"))
    before, after, repaired = (c.strip() for c in replicas.split("│")[2:5])
    assert before == "20 / 20.0 / 20"  # k = 20 copies of every value
    assert int(after.split(" / ")[0]) < 20  # the crash took copies away ...
    assert repaired == "20 / 20.0 / 20"  # ... and repair put them back
    on_k = next(v for k, v in rows.items() if k.startswith("values on k live nodes"))
    assert re.search(r"│\s+10/10 in [\d.]+ s\s+│", on_k), on_k
    assert text.count("10/10 (100.0%)") >= 4  # puts and three rounds of gets
