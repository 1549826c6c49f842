"""The ``nautilus-kad`` command line.

``demo`` runs a whole network of real UDP nodes on loopback in one process and reports how it
fared; ``run`` keeps one node in the foreground; ``put``/``get``/``ping``/``lookup`` start a
short-lived client node, do one operation and stop.

This is the only module that configures logging. Every error the user can cause (bad arguments,
unreachable peers, a failed query) ends in one ``error: ...`` line on stderr and a non-zero exit
status: 2 for argument problems, 1 for network failures, 130 for Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, TypeVar

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .aio.node import Node
from .aio.runner import run as run_coroutine
from .cli_values import check_size, read_value_file, transfer_bar, write_value_file
from .clidaemon import call, choice, daemon_options, find_daemon
from .clierrors import CommandFailed
from .clierrors import describe_os_error as _describe_os_error
from .core.addresses import AddressError, format_address, parse_address
from .core.config import KadConfig
from .core.errors import KadError, NoPeersError, QueryError
from .core.identity import PUBLIC_KEY_BYTES, Identity
from .core.ids import NodeId, distance
from .core.limits import MAX_SALT_BYTES, MAX_SEQ
from .core.messages import Address, Contact
from .daemon_commands import status_command, stop_command, table_command
from .demo import (
    DEMO_LOOKUPS,
    DEMO_NODES,
    DEMO_REPUBLISH_INTERVAL,
    DEMO_SUCCESS_AFTER_KILL,
    DEMO_VALUES,
    DemoReport,
    demo_table,
    run_demo,
)
from .sim.adversarial.command import adversarial_command
from .sim.command import sim_command

T = TypeVar("T")

PROG_NAME = "nautilus-kad"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_log = logging.getLogger("nautilus_kad.cli")


# ==========================================================================================
# Errors and exit codes
# ==========================================================================================


class ArgumentError(click.ClickException):
    """A click usage error shown as one ``error: ...`` line (exit status 2)."""

    exit_code: ClassVar[int] = EXIT_USAGE

    def __init__(self, original: click.UsageError) -> None:
        super().__init__(original.format_message())
        self.command_path = original.ctx.command_path if original.ctx is not None else PROG_NAME

    def show(self, file: IO[Any] | None = None) -> None:
        message = f"error: {self.format_message()} (see '{self.command_path} --help')"
        click.echo(message, file=file, err=file is None)


class Interrupted(click.ClickException):
    """Ctrl-C: exit status 130, no traceback."""

    exit_code: ClassVar[int] = EXIT_INTERRUPTED

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)

    def show(self, file: IO[Any] | None = None) -> None:
        if self.message:
            click.echo(self.message, file=file, err=file is None)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # shows the help text, as it should
    except click.UsageError as exc:
        raise ArgumentError(exc) from exc


class KadGroup(click.Group):
    """A group whose usage errors are one line, like every other error of the tool."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning expected failures into one-line errors."""
    try:
        return run_coroutine(main)
    except KeyboardInterrupt:
        raise Interrupted() from None
    except KadError as exc:
        raise CommandFailed(str(exc) or type(exc).__name__) from None
    except OSError as exc:
        raise CommandFailed(_describe_os_error(exc)) from None


# ==========================================================================================
# Logging
# ==========================================================================================


@dataclass
class Settings:
    """Options of the top-level group, shared with every command."""

    verbose: int = 0


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: int) -> None:
    """Send log records at ``level`` and above to stderr in a readable one-line format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def _setup_logging(ctx: click.Context, default: int, explicit: str | None = None) -> None:
    level = logging.getLevelName(explicit.upper()) if explicit else default
    settings = ctx.find_object(Settings)
    verbose = settings.verbose if settings is not None else 0
    if verbose:
        level = min(level, logging.INFO if verbose == 1 else logging.DEBUG)
    configure_logging(level)


# ==========================================================================================
# Argument types
# ==========================================================================================

if TYPE_CHECKING:
    _AddressParamType = click.ParamType[Address]
    _NodeIdParamType = click.ParamType[NodeId]
else:  # click < 8.4 has no generic ParamType
    _AddressParamType = _NodeIdParamType = click.ParamType


class AddressType(_AddressParamType):
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals)."""

    name = "HOST:PORT"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Address:
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except AddressError as exc:
            self.fail(str(exc), param, ctx)


class NodeIdType(_NodeIdParamType):
    """A node id as 64 hex digits (an optional ``0x`` prefix is accepted)."""

    name = "NODE_ID"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> NodeId:
        if isinstance(value, NodeId):
            return value
        text = str(value).strip().lower().removeprefix("0x")
        try:
            return NodeId.from_hex(text)
        except ValueError:
            self.fail(f"{value!r} is not a node id (expected 64 hex digits)", param, ctx)


class ListenAddressType(AddressType):
    """``HOST:PORT`` to listen on: port 0 (a free one) is allowed."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Address:
        text = value if isinstance(value, tuple) else str(value).strip()
        if isinstance(text, str) and text.endswith(":0"):
            host, _port = super().convert(text[:-1] + "1", param, ctx)
            return (host, 0)
        return super().convert(value, param, ctx)


ADDRESS = AddressType()
LISTEN_ADDRESS = ListenAddressType()
NODE_ID = NodeIdType()
PORT = click.IntRange(0, 65535)

_bootstrap_required = click.option(
    "--bootstrap",
    "-b",
    "bootstrap",
    type=ADDRESS,
    multiple=True,
    help="A node of the network to join through (repeatable), when no daemon is used.",
)


def _need_bootstrap(ctx: click.Context, bootstrap: Sequence[Address]) -> None:
    """Without a daemon, a short-lived node can only join through ``--bootstrap``."""
    if not bootstrap:
        raise click.UsageError(
            "no daemon is running and no --bootstrap given: start one with "
            "'nautilus-kad run', or join through a node with --bootstrap HOST:PORT",
            ctx,
        )


_host_option = click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the temporary client node binds (on a free port).",
)

PROFILES = ("default", "secure")

_profile_option = click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="default",
    show_default=True,
    help="Protocol profile. 'secure' runs every lookup on 4 disjoint paths (S/Kademlia), "
    "which resists colluding misrouting nodes at about 4x the lookup messages, and reads "
    "signed records from a larger quorum.",
)


def profile_config(profile: str) -> KadConfig:
    """The configuration a ``--profile`` names."""
    return KadConfig.secure() if profile == "secure" else KadConfig()


# ==========================================================================================
# The command group
# ==========================================================================================


@click.group(PROG_NAME, cls=KadGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name=PROG_NAME)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More logging on stderr: -v for INFO, -vv for DEBUG.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """nautilus-kad: an authenticated Kademlia DHT over UDP.

    Start with `nautilus-kad demo`: it runs a network of real nodes on loopback, stores and
    retrieves values, crashes a third of the nodes and shows that the data survives.
    """
    ctx.obj = Settings(verbose=verbose)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``nautilus-kad``)."""
    try:
        cli.main(args=argv, prog_name=PROG_NAME)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside any command
        sys.exit(EXIT_INTERRUPTED)


# ==========================================================================================
# Shared helpers
# ==========================================================================================


def _stdout_console() -> Console:
    """A console for tables: as wide as the terminal, or wide enough for full node ids when
    the output goes to a pipe or file."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def _join_list(addresses: Sequence[Address]) -> str:
    return ", ".join(format_address(a) for a in addresses)


@contextlib.asynccontextmanager
async def _client_node(
    host: str, bootstrap: Sequence[Address], config: KadConfig | None = None
) -> AsyncIterator[Node]:
    """A short-lived node on a free port that joins through ``bootstrap`` and stops on exit.

    It runs in client mode, so the peers it talks to keep it out of their routing tables (it
    will be gone in a moment).
    """
    node = await _start_node(host, 0, client_mode=True, config=config)
    try:
        if bootstrap:
            await _join(node, bootstrap)
        yield node
    finally:
        await node.stop()


async def _start_node(
    host: str,
    port: int,
    identity: Identity | None = None,
    *,
    client_mode: bool = False,
    config: KadConfig | None = None,
    data_dir: Path | None = None,
) -> Node:
    try:
        return await Node.start(
            host,
            port,
            identity=identity,
            client_mode=client_mode,
            config=config,
            data_dir=data_dir,
        )
    except OSError as exc:
        where = format_address((host, port))
        raise KadError(f"cannot listen on {where}: {_describe_os_error(exc)}") from exc


def _load_identity(key_file: Path) -> Identity:
    """The identity in ``key_file``, created there on first use; one-line errors."""
    try:
        return Identity.load_or_create(key_file)
    except KadError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        reason = _describe_os_error(exc)
        raise CommandFailed(f"cannot create key file {key_file}: {reason}") from None


async def _join(node: Node, bootstrap: Sequence[Address]) -> int:
    try:
        return await node.bootstrap(bootstrap)
    except NoPeersError as exc:
        raise NoPeersError(f"bootstrap failed: no answer from {_join_list(bootstrap)}") from exc


def _hex_argument(text: str, size: int, hint: str, what: str) -> bytes:
    """``size`` bytes given as hex digits (an optional ``0x`` prefix is accepted)."""
    try:
        raw = bytes.fromhex(text.strip().lower().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise click.BadParameter(
            f"{text!r} is not {what} (expected {2 * size} hex digits)", param_hint=hint
        )
    return raw


def _encode_arg(text: str) -> bytes:
    """Command-line text to the bytes the user typed (undecodable bytes survive)."""
    return text.encode("utf-8", "surrogateescape")


# ==========================================================================================
# run
# ==========================================================================================


def _load_run_config(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    """``--config FILE`` (eager): the file's settings become the defaults of the other flags,
    below the command line and the environment."""
    if value is None:
        return
    from .daemon.config import ConfigError, load_config  # noqa: PLC0415

    known = [p.name for p in ctx.command.params if p.name and p.name not in ("config", "help")]
    try:
        settings = load_config(value, known)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from None
    ctx.default_map = {**(ctx.default_map or {}), **settings}


def _env(name: str) -> str:
    return f"NAUTILUS_KAD_{name.upper()}"


@cli.command("run")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    is_eager=True,
    expose_value=False,
    callback=_load_run_config,
    envvar=_env("config"),
    help="A TOML file of these settings (keys = flag names). Flags and NAUTILUS_KAD_<KEY> "
    "environment variables override it.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar=_env("host"), help="Address to bind."
)
@click.option(
    "--port",
    type=PORT,
    default=7400,
    show_default=True,
    envvar=_env("port"),
    help="UDP port (0 picks a free one).",
)
@click.option(
    "--bootstrap",
    "-b",
    "bootstrap",
    type=ADDRESS,
    multiple=True,
    envvar=_env("bootstrap"),
    help="A node to join through (repeatable); without one this node starts a new network.",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=_env("key_file"),
    help="Ed25519 key file, created on first use: keeps the node id across restarts.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=_env("data_dir"),
    help=(
        "Keep the records (SQLite), the routing table and the key (DIR/node.key unless "
        "--key-file) here: a restart keeps the node id, serves the same records and rejoins "
        "through the peers it knew, without --bootstrap. The api file goes here too.  "
        "[default: in memory]"
    ),
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    envvar=_env("log_level"),
    help="Logging threshold on stderr.  [default: INFO]",
)
@click.option(
    "--api-listen",
    type=LISTEN_ADDRESS,
    default=None,
    envvar=_env("api_listen"),
    help="TCP address of the local API, page and /metrics.  [default: 127.0.0.1:PORT+1, "
    "a free port when --port is 0]",
)
@click.option("--no-api", is_flag=True, envvar=_env("no_api"), help="Serve no API at all.")
@click.option(
    "--api-allow-remote",
    is_flag=True,
    envvar=_env("api_allow_remote"),
    help="Allow --api-listen on a non-loopback address (prefer an SSH tunnel).",
)
@click.option(
    "--api-allowed-host",
    multiple=True,
    envvar=_env("api_allowed_host"),
    help="Another HOST:PORT the API answers to (Host header allowlist; repeatable).",
)
@_profile_option
@click.option(
    "--mode",
    type=click.Choice(["server", "auto", "client"]),
    default="server",
    show_default=True,
    envvar=_env("mode"),
    help="server: serve the DHT from the start (run a network's first nodes so); auto: "
    "start as a client and serve once probes from other nodes prove it can be reached "
    "(behind a NAT that drops unsolicited datagrams it stays a client); client: never serve.",
)
@click.option(
    "--nat-timescale",
    type=click.FloatRange(min=0.001, max=1.0),
    default=1.0,
    hidden=True,
    envvar=_env("nat_timescale"),
    help="Multiply every reachability timer by this (test labs).",
)
@click.option(
    "--echo",
    "echo_channels",
    is_flag=True,
    envvar=_env("echo"),
    help="Send every datagram of every channel peers open to this node back to them "
    "(a target for `connect`).",
)
@click.option(
    "--keepalive",
    type=click.FloatRange(min=0.05),
    default=20.0,
    show_default=True,
    envvar=_env("keepalive"),
    help="Seconds between keepalives to this node's rendezvous (when it is a client) and on "
    "idle channels: keep it under the NAT's UDP binding timeout.",
)
@click.option(
    "--relay-only",
    is_flag=True,
    envvar=_env("relay_only"),
    help="Never punch: channels to NATed peers go through a relay.",
)
@click.pass_context
def run_command(
    ctx: click.Context,
    host: str,
    port: int,
    bootstrap: tuple[Address, ...],
    key_file: Path | None,
    data_dir: Path | None,
    log_level: str | None,
    api_listen: Address | None,
    no_api: bool,
    api_allow_remote: bool,
    api_allowed_host: tuple[str, ...],
    profile: str,
    mode: str,
    nat_timescale: float,
    echo_channels: bool,
    keepalive: float,
    relay_only: bool,
) -> None:
    """Run a node in the foreground with its local API, until Ctrl-C, SIGTERM or `stop`.

    Once it serves, the API's address and a fresh token are in the api file (DATA_DIR/api,
    else ~/.local/state/nautilus-kad/api), where put, get, ping, lookup, status, table and
    stop find it. Stopping hands the records it holds to the nodes that keep them.
    """
    from .daemon.service import ApiSettings, serve  # noqa: PLC0415 - aiohttp only for run

    _setup_logging(ctx, logging.INFO, log_level)
    if data_dir is not None:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            reason = _describe_os_error(exc)
            raise CommandFailed(f"cannot create data directory {data_dir}: {reason}") from None
        if key_file is None:
            key_file = data_dir / "node.key"
    identity = _load_identity(key_file) if key_file is not None else Identity.generate()
    api = ApiSettings(
        enabled=not no_api,
        host=api_listen[0] if api_listen else "127.0.0.1",
        port=api_listen[1] if api_listen else None,
        allow_remote=api_allow_remote,
        allowed_hosts=api_allowed_host,
    )
    goodbye = f"node {identity.node_id.short()} stopped. Goodbye."
    config = profile_config(profile)
    traversal = dataclasses.replace(config.traversal, relay_only=relay_only)
    traversal = traversal.scaled(keepalive / traversal.keepalive)
    config = config.with_changes(
        mode=mode, nat=config.nat.scaled(nat_timescale), traversal=traversal
    )
    try:
        signum = _run(
            serve(
                host,
                port,
                bootstrap,
                identity,
                data_dir,
                config,
                api,
                click.echo,
                echo_channels=echo_channels,
            )
        )
    except Interrupted:  # Ctrl-C before the signal handlers were in place
        click.echo(goodbye)
        raise Interrupted("") from None
    if signum == signal.SIGINT and sys.stdout.isatty():
        click.echo()  # end the line the terminal's "^C" echo started
    click.echo(goodbye)


# ==========================================================================================
# put / get / ping / lookup
# ==========================================================================================


_key_file_option = click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Ed25519 key file of the record's owner (created on first use): signs --signed "
    "records. Use the key file of your node to publish as that node.",
)


@cli.command("put")
@click.argument("key", required=False)
@click.argument("value", required=False)
@_bootstrap_required
@_host_option
@click.option("--signed", is_flag=True, help="Publish a signed record: KEY is its NAME.")
@click.option(
    "--immutable", is_flag=True, help="Store the one argument under its SHA-256 (no KEY)."
)
@_key_file_option
@click.option(
    "--seq",
    type=click.IntRange(0, MAX_SEQ),
    default=None,
    help="Sequence number of a signed record.  [default: one more than the network holds]",
)
@click.option(
    "--cas",
    type=click.IntRange(0, MAX_SEQ),
    default=None,
    help="Compare-and-swap: fail if the signed record was written past this sequence number.",
)
@click.option("--hex", "value_is_hex", is_flag=True, help="VALUE is given as hex digits.")
@click.option(
    "--file",
    "value_file",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    default=None,
    help="Store the bytes of this file (up to 1 MiB; - reads stdin) instead of VALUE.",
)
@click.option(
    "--ttl",
    type=click.IntRange(min=1),
    default=None,
    help="Lifetime in seconds (storers cap it at 24 h).  [default: 24 h]",
)
@_profile_option
@daemon_options
@click.pass_context
def put_command(
    ctx: click.Context,
    api_url: str | None,
    no_daemon: bool,
    daemon_data_dir: Path | None,
    key: str | None,
    value: str | None,
    bootstrap: tuple[Address, ...],
    host: str,
    signed: bool,
    immutable: bool,
    key_file: Path | None,
    seq: int | None,
    cas: int | None,
    value_is_hex: bool,
    value_file: Path | None,
    ttl: int | None,
    profile: str,
) -> None:
    """Store VALUE under KEY on the nodes closest to it.

    \b
    put KEY VALUE                         an open record (last writer wins)
    put --signed NAME VALUE --key-file F  F's signed record NAME (get it with
                                          get --signed OWNER NAME)
    put --immutable VALUE                 stored under SHA-256(VALUE): prints the key
    put KEY --file PATH                   the bytes of a file (also with --signed NAME
                                          or --immutable), up to 1 MiB; values larger
                                          than a datagram go in pieces, with a progress bar
    """
    _setup_logging(ctx, logging.WARNING)
    if signed and immutable:
        raise click.UsageError("--signed and --immutable exclude each other", ctx)
    if not signed and (seq is not None or cas is not None):
        raise click.UsageError("--seq and --cas apply to --signed records only", ctx)
    if signed and key_file is None:
        raise click.UsageError("--signed needs --key-file (the owner's key)", ctx)
    if value_file is not None:
        if value_is_hex:
            raise click.UsageError("--hex and --file exclude each other", ctx)
        if immutable and key is not None:
            raise click.UsageError("put --immutable --file takes no argument", ctx)
        if value is not None:
            raise click.UsageError("VALUE and --file exclude each other", ctx)
        value = ""
    elif immutable:
        if key is None:
            raise click.UsageError("Missing argument 'VALUE'.", ctx)
        if value is not None:
            raise click.UsageError("put --immutable takes one argument, VALUE", ctx)
        key, value = "", key
    elif value is None:
        raise click.UsageError(f"Missing argument '{'VALUE' if key else 'KEY'}'.", ctx)
    if key is None:
        if not immutable:
            raise click.UsageError("Missing argument 'KEY'.", ctx)
        key = ""
    if value_file is not None:
        data = read_value_file(value_file)
    elif value_is_hex:
        try:
            data = bytes.fromhex(value)
        except ValueError:
            raise click.BadParameter("not valid hex", param_hint="VALUE") from None
    else:
        data = _encode_arg(value)
    check_size(data, "VALUE")
    name = _encode_arg(key)
    if signed and len(name) > MAX_SALT_BYTES:
        raise click.BadParameter(
            f"{len(name)} bytes is more than the {MAX_SALT_BYTES}-byte limit of a name",
            param_hint="NAME",
        )
    if signed and seq is not None and cas is not None and seq <= cas:
        raise click.BadParameter("must be greater than --cas", param_hint="--seq")
    owner = _load_identity(key_file) if key_file is not None else None
    daemon = find_daemon(choice(api_url, no_daemon, daemon_data_dir))
    if daemon is not None:
        body: dict[str, Any] = {"value": data.hex(), "ttl": ttl}
        if owner is not None:
            assert key_file is not None
            body.update(kind="signed", name=name.hex(), seq=seq, cas=cas)
            body["key_file"] = str(key_file.resolve())
        elif immutable:
            body["kind"] = "immutable"
        else:
            body["key"] = name.hex()
        answer = call(daemon, "put", body)
        if owner is not None:
            click.echo(f"key    {answer['key']}")
            click.echo(f"owner  {answer['owner']}")
            click.echo(f"seq    {answer['seq']}")
            click.echo(f"acks   {answer['acks']}")
            _echo_pieces(answer.get("piece_acks", []), "   ")
        elif immutable:
            click.echo(f"key   {answer['key']}")
        else:
            click.echo(f"key   {answer['key']}")
            click.echo(f"acks  {answer['acks']}")
            _echo_pieces(answer.get("piece_acks", []), "  ")
        return
    _need_bootstrap(ctx, bootstrap)

    async def put() -> None:
        # The client node has an identity of its own: the key file may well be that of a
        # running node, and two nodes must not share one node id.
        with transfer_bar("storing", len(data)) as bar:
            async with _client_node(host, bootstrap, profile_config(profile)) as node:
                # A client-mode node keeps no copy itself: every ack is a node of the network.
                if owner is not None:
                    done = await node.put_signed_record(
                        name, data, seq=seq, cas=cas, ttl=ttl, owner=owner, progress=bar
                    )
                    click.echo(f"key    {done.key.hex()}")
                    click.echo(f"owner  {owner.public_key.hex()}")
                    click.echo(f"seq    {done.seq}")
                    click.echo(f"acks   {done.acks}")
                    _echo_pieces(done.piece_acks, "   ")
                    return
                if immutable:
                    cid = await node.put_immutable(data, ttl=ttl, progress=bar)
                    click.echo(f"key   {cid.hex()}")
                    return
                result = await node.put(name, data, ttl=ttl, progress=bar)
        click.echo(f"key   {result.key.hex()}")
        click.echo(f"acks  {result.acks}")
        _echo_pieces(result.piece_acks, "  ")

    _run(put())


def _echo_pieces(piece_acks: Sequence[int], pad: str) -> None:
    """For a value stored in pieces: how many, and the fewest nodes any of them reached."""
    if piece_acks:
        click.echo(f"pieces{pad}{len(piece_acks)} (each on at least {min(piece_acks)} nodes)")


@cli.command("get")
@click.argument("key")
@click.argument("name", required=False)
@_bootstrap_required
@_host_option
@click.option(
    "--signed",
    is_flag=True,
    help="Get a signed record: KEY is its owner's public key (64 hex digits), then its NAME.",
)
@click.option(
    "--immutable", is_flag=True, help="Get an immutable record: KEY is its 64-hex-digit key."
)
@click.option("--show-seq", is_flag=True, help="With --signed: print 'seq N' first.")
@click.option("--hex", "as_hex", is_flag=True, help="Print the value as hex.")
@click.option("--raw", "as_raw", is_flag=True, help="Write the value's bytes unchanged.")
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    default=None,
    help="Write the value's bytes to this file (whole or not at all).",
)
@_profile_option
@daemon_options
@click.pass_context
def get_command(
    ctx: click.Context,
    api_url: str | None,
    no_daemon: bool,
    daemon_data_dir: Path | None,
    key: str,
    name: str | None,
    bootstrap: tuple[Address, ...],
    host: str,
    signed: bool,
    immutable: bool,
    show_seq: bool,
    as_hex: bool,
    as_raw: bool,
    out_file: Path | None,
    profile: str,
) -> None:
    """Print the value stored under KEY (UTF-8 text when it decodes, else hex).

    \b
    get KEY                       an open record
    get --signed OWNER NAME       OWNER's newest signed record NAME (a quorum read)
    get --immutable KEY           the value whose SHA-256 is KEY
    get KEY --out PATH            write the value to a file (any kind; a value stored
                                  in pieces shows a progress bar)
    """
    _setup_logging(ctx, logging.WARNING)
    if as_hex and as_raw:
        raise click.UsageError("--hex and --raw exclude each other", ctx)
    if out_file is not None and (as_hex or as_raw):
        raise click.UsageError("--out writes the bytes: no --hex or --raw with it", ctx)
    if signed and immutable:
        raise click.UsageError("--signed and --immutable exclude each other", ctx)
    if show_seq and not signed:
        raise click.UsageError("--show-seq applies to --signed records only", ctx)
    if signed and name is None:
        raise click.UsageError("Missing argument 'NAME' (get --signed OWNER NAME).", ctx)
    if not signed and name is not None:
        raise click.UsageError(f"unexpected extra argument {name!r}", ctx)
    owner = b""
    target: NodeId | None = None
    if signed:
        owner = _hex_argument(key, PUBLIC_KEY_BYTES, "OWNER", "an owner public key")
    elif immutable:
        target = NodeId.from_bytes_exact(_hex_argument(key, 32, "KEY", "an immutable key"))
    seq: list[int] = []
    value: bytes | None
    daemon = find_daemon(choice(api_url, no_daemon, daemon_data_dir))
    if daemon is not None:
        if signed:
            assert name is not None
            body = {"kind": "signed", "owner": owner.hex(), "name": _encode_arg(name).hex()}
        elif target is not None:
            body = {"kind": "immutable", "key": target.hex()}
        else:
            body = {"key": _encode_arg(key).hex()}
        answer = call(daemon, "get", body)
        value = bytes.fromhex(answer["value"]) if answer.get("found") else None
        if value is not None and signed:
            seq.append(int(answer["seq"]))
    else:
        _need_bootstrap(ctx, bootstrap)
        value = _run(_get_with_node(host, bootstrap, profile, key, name, owner, target, seq))
    if out_file is not None and value is not None:
        write_value_file(out_file, value)
        if show_seq:
            click.echo(f"seq {seq[0]}")
        click.echo(f"wrote {len(value)} bytes to {out_file}")
        return
    _print_value(
        key, name, value, signed=signed, show_seq=show_seq, seq=seq, as_raw=as_raw, as_hex=as_hex
    )


async def _get_with_node(
    host: str,
    bootstrap: Sequence[Address],
    profile: str,
    key: str,
    name: str | None,
    owner: bytes,
    target: NodeId | None,
    seq: list[int],
) -> bytes | None:
    """``get`` through a short-lived node (no daemon)."""
    with transfer_bar("fetching", None) as bar:
        async with _client_node(host, bootstrap, profile_config(profile)) as node:
            if owner:
                assert name is not None
                record = await node.get_signed(owner, _encode_arg(name), progress=bar)
                if record is None:
                    return None
                seq.append(record.seq)
                return record.value
            if target is not None:
                return await node.get_immutable(target, progress=bar)
            result = await node.get_record(_encode_arg(key))
            _log.info("lookup took %d hops, %d queries", result.hops, result.queries)
            if result.record is None:
                return None
            return await node.value_of(result.record, progress=bar)


def _print_value(
    key: str,
    name: str | None,
    value: bytes | None,
    *,
    signed: bool,
    show_seq: bool,
    seq: list[int],
    as_raw: bool,
    as_hex: bool,
) -> None:
    """What ``get`` prints: the value as text when it decodes, else hex (or as asked)."""
    if value is None:
        what = f"signed record {name!r} of {key}" if signed else repr(key)
        raise CommandFailed(f"{what} not found")
    if show_seq:
        click.echo(f"seq {seq[0]}")
    if as_raw:
        click.echo(value, nl=False)  # bytes go to the binary stream unchanged
        return
    if not as_hex:
        try:
            click.echo(value.decode("utf-8"))
        except UnicodeDecodeError:
            pass
        else:
            return
    click.echo(value.hex())


@cli.command("ping")
@click.argument("address", type=ADDRESS)
@_host_option
@daemon_options
@click.pass_context
def ping_command(
    ctx: click.Context,
    api_url: str | None,
    no_daemon: bool,
    daemon_data_dir: Path | None,
    address: Address,
    host: str,
) -> None:
    """Ping the node at ADDRESS (HOST:PORT) and print its id and round-trip time."""
    _setup_logging(ctx, logging.WARNING)
    daemon = find_daemon(choice(api_url, no_daemon, daemon_data_dir))
    if daemon is not None and daemon.info.get("udp_address") == format_address(address):
        daemon = None  # the daemon's own address: measure it from outside, as before
    if daemon is not None:
        answer = call(daemon, "ping", {"address": format_address(address)})
        click.echo(f"{answer['node_id']} at {answer['address']}: rtt {answer['rtt_ms']:.2f} ms")
        return

    async def ping() -> None:
        async with _client_node(host, ()) as node:
            started = time.perf_counter()
            result = await node.ping(address)  # QueryError: "no answer from HOST:PORT"
            # Measured here: under uvloop the loop clock (and so PingResult.rtt) ticks in
            # whole milliseconds, too coarse for loopback.
            rtt_ms = (time.perf_counter() - started) * 1000
        contact = result.contact
        click.echo(
            f"{contact.node_id.hex()} at {format_address(contact.address)}: rtt {rtt_ms:.2f} ms"
        )

    _run(ping())


@cli.command("lookup")
@click.argument("node_id", type=NODE_ID)
@_bootstrap_required
@_host_option
@_profile_option
@daemon_options
@click.pass_context
def lookup_command(
    ctx: click.Context,
    api_url: str | None,
    no_daemon: bool,
    daemon_data_dir: Path | None,
    node_id: NodeId,
    bootstrap: tuple[Address, ...],
    host: str,
    profile: str,
) -> None:
    """Find the k nodes closest to NODE_ID (64 hex digits)."""
    _setup_logging(ctx, logging.WARNING)
    daemon = find_daemon(choice(api_url, no_daemon, daemon_data_dir))
    rows: list[tuple[str, str, int]]
    if daemon is not None:
        answer = call(daemon, "lookup", {"target": node_id.hex()})
        rows = [(c["node_id"], c["address"], c["distance_bits"]) for c in answer["contacts"]]
    else:
        _need_bootstrap(ctx, bootstrap)

        async def lookup() -> list[Contact]:
            async with _client_node(host, bootstrap, profile_config(profile)) as node:
                return list(await node.find_node(node_id))

        rows = [
            (
                c.node_id.hex(),
                format_address(c.address),
                distance(node_id, c.node_id).bit_length(),
            )
            for c in _run(lookup())
        ]
    if not rows:
        raise CommandFailed("the lookup found no nodes")
    table = Table(title=f"{len(rows)} nodes closest to {node_id.short()}…")
    table.add_column("#", justify="right")
    table.add_column("node id", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("distance (bits)", justify="right")
    for rank, (hex_id, where, bits) in enumerate(rows, 1):
        table.add_row(str(rank), hex_id, where, str(bits))
    _stdout_console().print(table)


# ==========================================================================================
# connect
# ==========================================================================================


@cli.command("connect")
@click.argument("node_id", type=NODE_ID)
@click.option("--message", "-m", required=True, help="The text to send on the channel.")
@_bootstrap_required
@_host_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=600),
    default=10.0,
    show_default=True,
    help="Seconds for the channel and the answer together.",
)
@click.option("--relay-only", is_flag=True, help="Never punch: go through a relay.")
@_profile_option
@click.pass_context
def connect_command(
    ctx: click.Context,
    node_id: NodeId,
    message: str,
    bootstrap: tuple[Address, ...],
    host: str,
    timeout: float,
    relay_only: bool,
    profile: str,
) -> None:
    """Open a channel to NODE_ID (behind a NAT or not), send --message, print the answer.

    The target is usually a node run with `run --echo`. Prints the answer, the path taken
    (direct, or relayed by one of the target's rendezvous) and the time it took.
    """
    _setup_logging(ctx, logging.WARNING)
    _need_bootstrap(ctx, bootstrap)
    config = profile_config(profile)
    config = config.with_changes(
        traversal=dataclasses.replace(config.traversal, relay_only=relay_only)
    )

    async def connect() -> tuple[bytes, str, float, float]:
        started = time.perf_counter()
        async with _client_node(host, bootstrap, config) as node:
            joined = time.perf_counter()
            channel = await node.connect(node_id.to_bytes32(), timeout=timeout)
            opened = time.perf_counter()
            await channel.send(_encode_arg(message))
            left = max(0.1, timeout - (opened - started))
            try:
                answer = await asyncio.wait_for(channel.recv(), left)
            except TimeoutError:
                raise QueryError(f"no answer on the channel within {left:.1f} s") from None
            done = time.perf_counter()
            path = channel.path
            await channel.close()
        return answer, path, (opened - joined) * 1000, (done - opened) * 1000

    answer, path, connect_ms, answer_ms = _run(connect())
    click.echo(f"answer: {answer.decode('utf-8', 'replace')}")
    click.echo(f"path: {path}")
    click.echo(f"time: {connect_ms + answer_ms:.1f} ms (connect {connect_ms:.1f} ms, "
               f"answer {answer_ms:.1f} ms)")  # fmt: skip


# ==========================================================================================
# demo
# ==========================================================================================


@cli.command("demo")
@click.option(
    "--nodes",
    type=click.IntRange(min=2),
    default=DEMO_NODES,
    show_default=True,
    help="Nodes to start.",
)
@click.option(
    "--values",
    type=click.IntRange(min=1),
    default=DEMO_VALUES,
    show_default=True,
    help="Values to put and get.",
)
@click.option(
    "--lookups",
    type=click.IntRange(min=0),
    default=DEMO_LOOKUPS,
    show_default=True,
    help="Lookups of random ids (their hops show how deep the network is).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the random choices (who puts, who gets, who dies).  [default: random]",
)
@click.option(
    "--kill-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=1 / 3,
    show_default="1/3",
    help="Share of the nodes to crash before the second round of gets.",
)
@click.option(
    "--republish-interval",
    type=click.FloatRange(min=0.5),
    default=DEMO_REPUBLISH_INTERVAL,
    show_default=True,
    help="Seconds between republishes (a real network uses 1 h); repair takes about this long.",
)
@click.option(
    "--k",
    "bucket_size",
    type=click.IntRange(2, 64),
    default=20,
    show_default=True,
    help="Bucket size and replication factor of the demo network.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the nodes bind.")
@click.option(
    "--serve",
    is_flag=True,
    help="Afterwards keep the surviving network up and serve one node's live page and API "
    "(its URL is printed; Ctrl-C ends it).",
)
@click.pass_context
def demo_command(
    ctx: click.Context,
    nodes: int,
    values: int,
    lookups: int,
    seed: int | None,
    kill_fraction: float,
    republish_interval: float,
    bucket_size: int,
    host: str,
    serve: bool,
) -> None:
    """Run a local network of real UDP nodes, crash some, and show the data survives: every
    value stays readable, and the survivors put it back on k live nodes."""
    _setup_logging(ctx, logging.WARNING)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    console = _stdout_console()

    def show(report: DemoReport) -> None:
        console.print(f"nodes: {', '.join(report.sample)}")
        console.print(demo_table(report))

    async def keep_serving(report: DemoReport, survivors: list[Node]) -> None:
        from .daemon.service import serve_demo_node  # noqa: PLC0415 - aiohttp only here

        show(report)
        await serve_demo_node(survivors[0], click.echo)

    main = run_demo(
        host,
        nodes,
        values,
        seed,
        kill_fraction,
        republish_interval,
        lookups=lookups,
        k=bucket_size,
        serve=keep_serving if serve else None,
    )
    report = _run(main)
    if not serve:
        show(report)
    before, after = report.gets_before, report.gets_after
    if before.successes < before.attempts:
        raise CommandFailed(
            f"demo failed: {before.attempts - before.successes} gets failed before the crash"
        )
    if after.success_rate < DEMO_SUCCESS_AFTER_KILL:
        raise CommandFailed(
            f"demo failed: only {after.success_text()} of the gets succeeded after the crash "
            f"(need {DEMO_SUCCESS_AFTER_KILL:.0%})"
        )


# The simulator's command lives with the simulator (it drives no socket); registering it here
# keeps one `nautilus-kad` entry point.
cli.add_command(sim_command)
cli.add_command(adversarial_command)
cli.add_command(status_command)
cli.add_command(table_command)
cli.add_command(stop_command)
