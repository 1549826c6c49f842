"""The command line's runtime failures and their exit statuses.

Every error the user can meet ends in one ``error: ...`` line on stderr and a status that
tells scripts what happened: 1 for an operation that failed (a peer did not answer, a key not
found), 2 for argument problems (click's usage errors), 3 when a daemon was to be used and
did not answer or refused us, 130 for Ctrl-C.
"""

from __future__ import annotations

from typing import IO, Any, ClassVar

import click

EXIT_FAILURE = 1
EXIT_DAEMON = 3


class CommandFailed(click.ClickException):
    """A network or runtime failure: ``error: ...`` on stderr, exit status 1."""

    exit_code: ClassVar[int] = EXIT_FAILURE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=file is None)


class DaemonUnavailable(CommandFailed):
    """The daemon we were to use did not answer, or refused us: exit status 3."""

    exit_code: ClassVar[int] = EXIT_DAEMON


def describe_os_error(exc: OSError) -> str:
    """``address already in use`` rather than uvloop's wrapper text or an errno tuple."""
    cause: BaseException = exc
    while isinstance(cause, OSError) and not cause.strerror and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[:1].lower() + cause.strerror[1:]
    return str(exc)
