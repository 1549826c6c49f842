"""``run --config FILE``: a TOML file of the same settings as ``run``'s flags.

Keys are the long flag names (``api-listen`` or ``api_listen``); a list where a flag is
repeatable (``bootstrap = ["127.0.0.1:7400"]``). Precedence, highest first: a flag on the
command line, the environment (``NAUTILUS_KAD_<KEY>``, e.g. ``NAUTILUS_KAD_PORT``), the
file, the built-in default. A key the file should not have is an error that names it: a typo
must not silently leave a setting at its default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The config file cannot be read, or it holds something ``run`` does not know."""


def load_config(path: Path, known: Iterable[str]) -> dict[str, Any]:
    """The settings in ``path``, keyed by parameter name (dashes become underscores)."""
    allowed = set(known)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in allowed:
            names = ", ".join(sorted(n.replace("_", "-") for n in allowed))
            raise ConfigError(f"config file {path}: unknown key {key!r} (known keys: {names})")
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: {key!r} must be a value, not a table")
        settings[name] = value
    return settings
