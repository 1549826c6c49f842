"""The api file: how command-line clients find the running daemon and prove they may act.

The daemon writes it once its HTTP listener accepts connections (so a client that sees the
file can connect at once), atomically (a temporary file renamed over it) and with mode 0600:
the token in it authorizes every action, so only the owner of the process may read it. The
daemon removes it on exit; a file left by a crash names a dead pid, which clients treat as
"no daemon".

Location: ``DATA_DIR/api`` for a daemon with a data dir, else the per-user state directory
(``$XDG_STATE_HOME/nautilus-kad/api``, by default ``~/.local/state/nautilus-kad/api``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

API_FILE = "api"
API_VERSION = 1
MAX_API_FILE_BYTES = 4096


class ApiFileError(Exception):
    """The api file exists but is not one this version wrote."""


@dataclass(frozen=True, slots=True)
class ApiInfo:
    """What the api file holds."""

    url: str
    """Base URL of the API, e.g. ``http://127.0.0.1:7401``."""
    token: str
    """Bearer token for actions (fresh random hex for each start)."""
    pid: int
    node_id: str
    version: str
    api: int = API_VERSION


def state_dir() -> Path:
    """The per-user state directory (XDG), where a daemon without a data dir writes."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nautilus-kad"


def api_file_path(data_dir: Path | str | None) -> Path:
    """Where the api file of a daemon on ``data_dir`` (or without one) lives."""
    return Path(data_dir) / API_FILE if data_dir is not None else state_dir() / API_FILE


def write_api_file(path: Path, info: ApiInfo) -> None:
    """Write ``info`` to ``path`` atomically, readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(info), out)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def read_api_file(path: Path) -> ApiInfo | None:
    """The api file at ``path``, or ``None`` when there is none."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_API_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApiFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > MAX_API_FILE_BYTES:
            raise ValueError("too large")
        data = json.loads(raw)
        info = ApiInfo(
            url=str(data["url"]),
            token=str(data["token"]),
            pid=int(data["pid"]),
            node_id=str(data["node_id"]),
            version=str(data["version"]),
            api=int(data["api"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiFileError(f"{path} is not a nautilus-kad api file ({exc})") from None
    return info


def remove_api_file(path: Path, token: str) -> None:
    """Remove ``path`` if it is still the one holding ``token`` (not a newer daemon's)."""
    with contextlib.suppress(ApiFileError):
        info = read_api_file(path)
        if info is not None and info.token == token:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a crashed daemon's file names a dead one)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
