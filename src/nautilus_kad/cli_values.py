"""What ``put --file`` and ``get --out`` add to the command line: reading and writing values
of up to the blob limit from files, and a progress bar while a large value moves.

Failures are one-line errors (click's ``BadParameter`` for a file that cannot be read, the
command's ``CommandFailed`` for one that cannot be written); the missing-pieces error of a
large get arrives as a :class:`~nautilus_kad.core.errors.KadError` and is printed by the
command runner like every other.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from .clierrors import CommandFailed
from .clierrors import describe_os_error as _describe_os_error
from .core.blob import BlobConfig
from .core.limits import IMMUTABLE_VALUE_LIMIT

BLOB_LIMIT = BlobConfig().max_size
"""The largest value the command line puts (the library's default limit)."""

ProgressCallback = Callable[[int, int], None]


def read_value_file(path: Path) -> bytes:
    """The bytes of ``path`` (``-`` reads stdin), refused past the blob limit before the
    whole file is read."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(BLOB_LIMIT + 1)
        else:
            with path.open("rb") as handle:
                data = handle.read(BLOB_LIMIT + 1)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot read {str(path)!r}: {_describe_os_error(exc)}", param_hint="--file"
        ) from None
    if len(data) > BLOB_LIMIT:
        raise click.BadParameter(
            f"the file is larger than the {BLOB_LIMIT}-byte limit of a value", param_hint="--file"
        )
    return data


def check_size(data: bytes, hint: str) -> None:
    if len(data) > BLOB_LIMIT:
        raise click.BadParameter(
            f"{len(data)} bytes is more than the {BLOB_LIMIT}-byte limit of a value",
            param_hint=hint,
        )


def write_value_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CommandFailed(f"cannot write {str(path)!r}: {_describe_os_error(exc)}") from None


@contextlib.contextmanager
def transfer_bar(description: str, size_hint: int | None) -> Iterator[ProgressCallback]:
    """A progress bar on stderr for a value larger than a datagram (``size_hint`` None: not
    known yet, as for a get; the bar appears with the first piece).

    Yields the ``progress(done, total)`` callback the node's operations take.
    """
    if size_hint is not None and size_hint <= IMMUTABLE_VALUE_LIMIT:
        yield _ignore
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task(description, total=size_hint, start=False)
    started = False

    def update(done: int, total: int) -> None:
        nonlocal started
        if not started:
            started = True
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if started:
            progress.stop()


def _ignore(_done: int, _total: int) -> None:
    return None
