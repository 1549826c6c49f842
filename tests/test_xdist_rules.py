"""The suite's own scheduling rules on xdist workers (tests/conftest.py) hold: a ``solo`` test
overlaps no other test, the other tests do run side by side, and the tests sharing a
module-scoped fixture build it once. Checked by running pytest with the README's ``-n 2
--dist loadgroup`` on a generated suite that uses the real conftest."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

SUITE = """
import time
from pathlib import Path

import pytest

LOG = Path(__file__).parent / "log"


def record(name: str, seconds: float) -> None:
    start = time.monotonic()
    time.sleep(seconds)
    with LOG.open("a") as out:
        out.write(f"{name} {start} {time.monotonic()}\\n")


@pytest.fixture(scope="module")
def shared() -> str:
    with (Path(__file__).parent / "built").open("a") as out:
        out.write("once\\n")
    return "network"


@pytest.mark.solo
def test_alone() -> None:
    record("solo", 1.0)


@pytest.mark.parametrize("n", range(6))
def test_beside(n: int) -> None:
    record(f"plain{n}", 0.4)


@pytest.mark.parametrize("n", range(4))
def test_uses_shared(shared: str, n: int) -> None:
    assert shared == "network"
"""


def _intervals(log: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in log.read_text().splitlines():
        name, start, end = line.split()
        out[name] = (float(start), float(end))
    return out


def test_solo_runs_alone_and_the_rest_side_by_side(tmp_path: Path) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_generated.py").write_text(SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-q",
         "-p", "no:cacheprovider",
         "-W", "ignore::pytest.PytestUnknownMarkWarning", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 passed" in result.stdout, result.stdout
    spans = _intervals(tmp_path / "log")
    solo = spans.pop("solo")
    for name, (start, end) in spans.items():
        assert end <= solo[0] or start >= solo[1], f"{name} ran beside the solo test"
    plain = sorted(spans.values())
    overlaps = sum(1 for a, b in itertools.pairwise(plain) if b[0] < a[1])
    assert overlaps > 0, "the two workers never ran tests side by side"
    assert (tmp_path / "built").read_text() == "once\n"
