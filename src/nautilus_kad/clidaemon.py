"""The command line's side of the daemon: finding it, talking to it, and the commands that
only make sense with one (``status``, ``table``, ``stop``).

Which daemon a command uses, first match wins:

1. ``--no-daemon``: none, a short-lived node as before;
2. ``--api URL`` (or ``NAUTILUS_KAD_API``): that one, and it must answer (exit 3 if not);
3. the api file (``--data-dir DIR``'s, else the per-user one): its daemon, if it answers.
   A file whose pid is dead, or whose daemon refuses connections, is a daemon that is gone:
   the command falls back to a short-lived node with a one-line notice. A daemon that
   accepts but does not answer within a few seconds, or refuses our token, is an error
   (exit 3), never a hang or a silent fallback.

Standard library HTTP only (:mod:`.daemon.client`): no aiohttp import on this path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from .clierrors import CommandFailed, DaemonUnavailable
from .daemon.apifile import ApiFileError, api_file_path, pid_alive, read_api_file
from .daemon.client import (
    DaemonClient,
    DaemonOperationError,
    DaemonRejectedError,
    DaemonUnreachableError,
)

F = TypeVar("F", bound=Callable[..., Any])
STOP_WAIT = 30.0
"""Seconds ``stop`` waits for the daemon to hand its records on and remove its api file."""


@dataclass(frozen=True, slots=True)
class DaemonChoice:
    """What the daemon options say (see the module docstring)."""

    api: str | None
    no_daemon: bool
    data_dir: Path | None


def daemon_options(func: F) -> F:
    """``--api``, ``--no-daemon`` and ``--data-dir`` (for finding the api file)."""
    func = click.option(
        "--data-dir",
        "daemon_data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Use the daemon running on this data dir (its DIR/api file).",
    )(func)
    func = click.option(
        "--no-daemon",
        is_flag=True,
        help="Do not use a running daemon: start a short-lived node (needs --bootstrap).",
    )(func)
    func = click.option(
        "--api",
        "api_url",
        default=None,
        envvar="NAUTILUS_KAD_API",
        metavar="URL",
        help="Use the daemon at URL (it must answer), e.g. http://127.0.0.1:7401.",
    )(func)
    return func


def choice(api_url: str | None, no_daemon: bool, daemon_data_dir: Path | None) -> DaemonChoice:
    if no_daemon and api_url:
        raise click.UsageError("--api and --no-daemon exclude each other")
    return DaemonChoice(api_url, no_daemon, daemon_data_dir)


def find_daemon(opts: DaemonChoice, *, quiet_fallback: bool = False) -> DaemonClient | None:
    """The daemon to use, or ``None`` for the short-lived-node path (see module docstring)."""
    if opts.no_daemon:
        return None
    path = api_file_path(opts.data_dir)
    try:
        info = read_api_file(path)
    except ApiFileError as exc:
        if opts.api:
            info = None
        else:
            raise DaemonUnavailable(str(exc)) from None
    if opts.api:
        url = opts.api.rstrip("/")
        token = info.token if info is not None and info.url == url else None
        client = DaemonClient(url, token)
        _handshake(client)
        return client
    if info is None:
        return None
    if not pid_alive(info.pid):
        if not quiet_fallback:
            _notice(f"the daemon in {path} (pid {info.pid}) is gone; using a short-lived node")
        return None
    client = DaemonClient(info.url, info.token)
    try:
        _handshake(client)
    except DaemonUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, DaemonUnreachableError) and cause.refused:
            if not quiet_fallback:
                _notice(
                    f"the daemon at {info.url} refused the connection; using a short-lived node"
                )
            return None
        raise
    return client


def require_daemon(opts: DaemonChoice) -> DaemonClient:
    """The daemon for ``status``/``table``/``stop``: there is no short-lived fallback."""
    if opts.no_daemon:
        raise click.UsageError("this command needs a daemon; --no-daemon makes no sense here")
    client = find_daemon(opts, quiet_fallback=True)
    if client is None:
        where = api_file_path(opts.data_dir)
        raise DaemonUnavailable(
            f"no daemon is running (no live api file at {where}); start one with "
            "'nautilus-kad run', or name it with --api URL / --data-dir DIR"
        )
    return client


def _notice(text: str) -> None:
    click.echo(f"notice: {text}", err=True)


def _handshake(client: DaemonClient) -> None:
    try:
        client.handshake()
    except DaemonUnreachableError as exc:
        raise DaemonUnavailable(
            f"{exc}; start it with 'nautilus-kad run' or pass --no-daemon"
        ) from exc
    except DaemonRejectedError as exc:
        raise DaemonUnavailable(str(exc)) from exc


def call(client: DaemonClient, action: str, body: dict[str, Any]) -> Any:
    """POST an action; its failure is a one-line error (exit 1), the daemon's absence exit 3."""
    try:
        return client.post(action, body)
    except DaemonOperationError as exc:
        raise CommandFailed(str(exc)) from None
    except DaemonUnreachableError as exc:
        raise DaemonUnavailable(str(exc)) from None
    except DaemonRejectedError as exc:
        raise DaemonUnavailable(str(exc)) from None


def read(client: DaemonClient, path: str) -> Any:
    try:
        return client.get(path)
    except (DaemonUnreachableError, DaemonRejectedError, DaemonOperationError) as exc:
        raise DaemonUnavailable(str(exc)) from None


def wait_for_exit(pid: int, timeout: float = STOP_WAIT) -> bool:
    """Wait (bounded) until the daemon's process is gone (it hands its records on first)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
