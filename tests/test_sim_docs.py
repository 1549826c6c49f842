"""The Python example in docs/simulator.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "simulator.md"


@pytest.mark.slow
def test_python_example_runs(capsys: object) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks, "docs/simulator.md lost its Python example"
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_example"})


def test_figures_exist() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in re.findall(r"\]\(([^)]+\.png)\)", text):
        png = DOC.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size < 200_000, f"{name} is too big to commit"
