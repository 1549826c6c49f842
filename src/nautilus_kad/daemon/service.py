"""``nautilus-kad run``: one node and its local API, from start to a clean exit.

One shutdown path whatever asks for it (SIGTERM, SIGINT, ``POST /api/v1/shutdown``, i.e.
``nautilus-kad stop``): tell systemd ``STOPPING=1``, stop accepting API connections and end
the event streams (an open page does not hold the exit), leave the network handing the
records on, remove the api file, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..aio.channels import echo_channels as echo_channels_of
from ..aio.node import Node
from ..clierrors import describe_os_error
from ..core.addresses import format_address
from ..core.config import KadConfig
from ..core.errors import KadError, NoPeersError
from ..core.identity import Identity
from ..core.messages import Address
from .apifile import ApiFileError, api_file_path, pid_alive, read_api_file
from .notify import notify
from .server import Daemon

_log = logging.getLogger("nautilus_kad.daemon")

STOPPED_BY_API = 0
"""What :func:`serve` returns when ``POST /shutdown`` stopped it (not a signal)."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int | None = None
    """None: the UDP port + 1 (a free one when the UDP port is 0)."""
    allow_remote: bool = False
    allowed_hosts: tuple[str, ...] = ()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(
    host: str,
    port: int,
    bootstrap: Sequence[Address],
    identity: Identity,
    data_dir: Path | None,
    config: KadConfig | None,
    api: ApiSettings,
    echo: Callable[[str], None],
    *,
    echo_channels: bool = False,
) -> int:
    """Run a node (and its API) until a signal or ``stop``; return the signal's number, or
    :data:`STOPPED_BY_API`. With ``echo_channels`` every datagram of every channel a peer
    opens is sent back (``run --echo``)."""
    if api.enabled and not is_loopback(api.host) and not api.allow_remote:
        raise KadError(
            f"the API would listen on {api.host}, which is not a loopback address: anyone who "
            "reaches it can read the node's state; add --api-allow-remote if you mean it "
            "(or use an SSH tunnel to 127.0.0.1)"
        )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:
            sys.stderr.write(f"{signal.Signals(signum).name} again: exiting at once\n")
            os._exit(1)
        received.append(signum)
        stop.set()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
    try:
        node = await _start(host, port, identity, data_dir, config)
        daemon: Daemon | None = None
        try:
            _describe(node, data_dir, echo)
            if api.enabled:
                daemon = await _start_api(node, host, port, data_dir, api, stop.set, echo)
            await _join(node, bootstrap, echo)
            if echo_channels:
                echoing = loop.create_task(echo_channels_of(node.incoming()))
                echoing.add_done_callback(lambda task: task.cancelled() or task.exception())
            _log.info("node %s up at %s", node.node_id.short(), format_address(node.address))
            notify(f"READY=1\nSTATUS=node {node.node_id.short()} at {format_address(node.address)}")
            echo("daemon is ready")
            await stop.wait()
            notify("STOPPING=1")
            if received:
                _log.info("%s received: stopping", signal.Signals(received[0]).name)
            else:
                _log.info("stop requested through the API: stopping")
        finally:
            if daemon is not None:
                await daemon.close()
            await node.stop()
            if daemon is not None:
                daemon.remove_api_file()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return received[0] if received else STOPPED_BY_API


async def _start(
    host: str, port: int, identity: Identity, data_dir: Path | None, config: KadConfig | None
) -> Node:
    try:
        return await Node.start(host, port, identity=identity, config=config, data_dir=data_dir)
    except OSError as exc:
        reason = describe_os_error(exc)
        raise KadError(f"cannot listen on {format_address((host, port))}: {reason}") from exc


def _describe(node: Node, data_dir: Path | None, echo: Callable[[str], None]) -> None:
    echo(f"node id {node.node_id.hex()}")
    echo(f"public key {node.public_key.hex()}")
    echo(f"listening on {format_address(node.address)}")
    if data_dir is not None:
        held = len(node.engine.store)
        echo(f"data dir {data_dir}: {held} record{'' if held == 1 else 's'}")


async def _join(node: Node, bootstrap: Sequence[Address], echo: Callable[[str], None]) -> None:
    known = len(node.routing_table)
    if bootstrap:
        try:
            size = await node.bootstrap(bootstrap)
        except NoPeersError as exc:
            seeds = ", ".join(format_address(a) for a in bootstrap)
            raise NoPeersError(f"bootstrap failed: no answer from {seeds}") from exc
        peers = f"{size} peer{'' if size == 1 else 's'}"
        seeds = ", ".join(format_address(a) for a in bootstrap)
        echo(f"joined through {seeds}: {peers} in the routing table")
    elif known:
        peers = f"{known} peer{'' if known == 1 else 's'}"
        echo(f"rejoined through saved peers: {peers} in the routing table")
    elif node.rejoining:
        echo("none of the saved peers answered: retrying them in the background")
    else:
        echo("no --bootstrap given: this is the first node of a new network")


async def _start_api(
    node: Node,
    host: str,
    port: int,
    data_dir: Path | None,
    api: ApiSettings,
    request_stop: Callable[[], None],
    echo: Callable[[str], None],
) -> Daemon:
    api_port = api.port if api.port is not None else (port + 1 if 0 < port < 65535 else 0)
    default = api_file_path(data_dir)
    path: Path | None = default
    if data_dir is None:
        holder = _live_holder(default)
        if holder is not None:
            echo(
                f"api file {default} belongs to the daemon with pid {holder}: this node's API "
                "serves reads only (give each daemon a --data-dir for its own api file)"
            )
            path = None
    if not is_loopback(api.host):
        _log.warning(
            "the API listens on %s, beyond this machine: its page, metrics and state are "
            "readable by whoever reaches it (actions still need the token)",
            api.host,
        )
    daemon = Daemon(
        node,
        host=api.host,
        port=api_port,
        api_file=path,
        allowed=api.allowed_hosts,
        request_stop=request_stop,
    )
    try:
        await daemon.start()
    except OSError as exc:
        reason = describe_os_error(exc)
        where = format_address((api.host, api_port))
        raise KadError(f"the API cannot listen on {where}: {reason} (see --api-listen)") from exc
    echo(f"api on {daemon.url} (page: {daemon.url}/, metrics: {daemon.url}/metrics)")
    return daemon


def _live_holder(path: Path) -> int | None:
    """The pid of another live daemon that owns the api file at ``path``, if any."""
    try:
        info = read_api_file(path)
    except ApiFileError:
        return None
    if info is None or info.pid == os.getpid() or not pid_alive(info.pid):
        return None
    return info.pid


async def serve_demo_node(node: Node, echo: Callable[[str], None]) -> None:
    """``demo --serve``: one of the demo's nodes gets the API and live page (on a free port,
    with the per-user api file when no other daemon holds it) until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        daemon = await _start_api(node, node.address[0], 0, None, ApiSettings(), stop.set, echo)
        try:
            short = node.node_id.short()
            echo(f"the live page of node {short}: {daemon.url}/ (Ctrl-C ends the demo)")
            await stop.wait()
        finally:
            await daemon.close()
            daemon.remove_api_file()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
