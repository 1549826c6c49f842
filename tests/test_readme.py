"""The README's library example is real code: it must run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.integration
def test_readme_library_example_runs() -> None:
    blocks = [b for b in _python_blocks() if "asyncio.run(main())" in b]
    assert blocks, "the README lost its runnable library example"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)\n```", text, re.S)
    assert commands[0].endswith("nautilus-kad demo")
    assert " -m pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, ".ci/run must run exactly the README's test command"
