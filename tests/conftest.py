"""Session-wide test settings.

Every test session gets its own per-user state directory: a daemon started by a test writes
its api file there, never into the real ``~/.local/state``, and the command-line clients
the tests run find only the tests' own daemons.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("xdg-state")
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "NAUTILUS_KAD_API")}
    os.environ["XDG_STATE_HOME"] = str(state)
    os.environ.pop("NAUTILUS_KAD_API", None)
    try:
        yield state
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
