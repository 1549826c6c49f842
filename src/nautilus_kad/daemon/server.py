"""The daemon's HTTP side: the aiohttp application on the node's own event loop.

:class:`Daemon` binds the listener, then writes the api file (so whoever sees the file can
connect at once), publishes live events, and on :meth:`Daemon.close` ends the event streams
first (an open page must not hold the exit for aiohttp's shutdown timeout), closes the
listener and removes the api file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..aio.node import Node
from ..core.addresses import format_address
from ..core.errors import KadError, ValidationError
from ..core.events import Event, PeerAdded, PeerRemoved
from . import actions, views
from .activity import Activity, Operation, Traffic
from .apifile import API_VERSION, ApiInfo, remove_api_file, write_api_file
from .hub import EventHub
from .metrics import NodeMetrics, exposition
from .security import HEADERS, Guard, allowed_hosts, json_error

_log = logging.getLogger("nautilus_kad.daemon")

MAX_BODY = 2 * actions.MAX_VALUE + 64 * 1024
"""Largest request body: one value of at most the blob limit, as hex, and its fields."""
SNAPSHOT_INTERVAL = 1.0
SHUTDOWN_TIMEOUT = 1.0
STATIC = ("index.html", "app.js", "app.css")
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


class Daemon:
    """The local API of one node (create, :meth:`start`, eventually :meth:`close`)."""

    def __init__(
        self,
        node: Node,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_file: Path | None = None,
        allowed: Iterable[str] = (),
        request_stop: Callable[[], None] = lambda: None,
        max_event_clients: int | None = None,
    ) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.api_file = api_file
        self._extra_hosts = tuple(allowed)
        self.request_stop = request_stop
        self.token = secrets.token_hex(32)
        self.started = time.time()
        self.stopping = False
        self.hub = EventHub() if max_event_clients is None else EventHub(max_event_clients)
        self.activity = Activity(self.hub.publish, self._operation_done)
        self.traffic = Traffic()
        self.guard = Guard(frozenset(), self.token)
        self.metrics = NodeMetrics(node, self._in_flight_by_kind, lambda: dict(self.guard.refused))
        self.url = ""
        self.info: ApiInfo | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._static = {
            name: (importlib.resources.files(__package__) / "static" / name).read_bytes()
            for name in STATIC
        }

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> ApiInfo:
        """Listen, then write the api file; returns what the file says."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app[DAEMON] = self
        _routes(app)
        app.on_shutdown.append(self._end_streams)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            await runner.cleanup()
            raise
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        port = sock.getsockname()[1]
        self.port = port
        self.guard = Guard(allowed_hosts(self.host, port, self._extra_hosts), self.token)
        self.url = f"http://{format_address((self.host, port))}"
        self._remove_listener = self.node.add_listener(self._on_event)
        self.node.routing_table.rtt_observer = self.metrics.rtt.observe
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="daemon ticker")
        self.info = ApiInfo(
            url=self.url,
            token=self.token,
            pid=os.getpid(),
            node_id=self.node.node_id.hex(),
            version=__version__,
        )
        if self.api_file is not None:
            write_api_file(self.api_file, self.info)
        return self.info

    async def close(self) -> None:
        """End the event streams and close the listener (the api file stays until
        :meth:`remove_api_file`: the node may still be handing its records on)."""
        self.stopping = True
        self.hub.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
            self.node.routing_table.rtt_observer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def remove_api_file(self) -> None:
        if self.api_file is not None and self.info is not None:
            remove_api_file(self.api_file, self.info.token)

    async def _end_streams(self, _app: web.Application) -> None:
        self.hub.close()

    # --- state -----------------------------------------------------------------------

    def _in_flight_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.activity.in_flight.values():
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts

    def _operation_done(self, op: Operation) -> None:
        self.metrics.operation_done(op)

    def _on_event(self, event: Event) -> None:
        self.activity.on_event(event)
        if isinstance(event, PeerAdded | PeerRemoved):
            added = isinstance(event, PeerAdded)
            self.metrics.table_changes.labels("added" if added else "removed").inc()
            contact = event.contact
            self.hub.publish(
                "peer_added" if added else "peer_removed",
                {"node_id": contact.node_id.hex(), "address": format_address(contact.address)},
            )

    def status(self) -> dict[str, Any]:
        node = self.node
        stats = node.stats
        summary = views.table_summary(node)
        if self.stopping:
            state = "stopping"
        elif node.rejoining:
            state = "rejoining"
        elif summary["contacts"] == 0:
            state = "alone"
        else:
            state = "ready"
        return {
            "node_id": node.node_id.hex(),
            "public_key": node.public_key.hex(),
            "version": __version__,
            "pid": os.getpid(),
            "udp_address": format_address(node.address),
            "api_url": self.url,
            "data_dir": node.data_dir,
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 1),
            "state": state,
            **summary,
            "records": int(stats.get("store.records", 0)),
            "records_bytes": int(stats.get("store.bytes", 0)),
            "queries_in_flight": len(self.activity.in_flight),
            "event_clients": len(self.hub),
            "reachability": views.reachability(node),
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "status": self.status(),
            "routing_table": views.routing_table(self.node),
            "traffic": list(self.traffic.samples),
        }

    async def _tick(self) -> None:
        """Once a second: a traffic sample, and a snapshot to every open event stream."""
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            point = self.traffic.sample(self.node.stats, time.time())
            if len(self.hub):
                self.hub.publish(
                    "snapshot",
                    {
                        "status": self.status(),
                        "routing_table": views.routing_table(self.node),
                        "traffic_point": point,
                    },
                )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        return await self.guard.middleware(request, handler)


# --- handlers ------------------------------------------------------------------------


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=json.dumps)


async def _version(request: web.Request) -> web.Response:
    d = _daemon(request)
    return _json(
        {
            "version": __version__,
            "api": API_VERSION,
            "node_id": d.node.node_id.hex(),
            "udp_address": format_address(d.node.address),
        }
    )


async def _status(request: web.Request) -> web.Response:
    return _json(_daemon(request).status())


async def _routing_table(request: web.Request) -> web.Response:
    return _json(views.routing_table(_daemon(request).node))


async def _records(request: web.Request) -> web.Response:
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return json_error(400, "offset and limit must be integers")
    if offset < 0 or not 1 <= limit <= views.MAX_PAGE:
        return json_error(400, f"need offset >= 0 and 1 <= limit <= {views.MAX_PAGE}")
    return _json(views.records(_daemon(request).node, offset, limit))


async def _lookups(request: web.Request) -> web.Response:
    return _json(_daemon(request).activity.to_json())


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = exposition(
        _daemon(request).metrics.registry, request.headers.get("Accept")
    )
    mime, _, params = content_type.partition(";")
    charset = "utf-8" if "charset" in params else None
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type if charset else mime
    return response


async def _page(request: web.Request) -> web.Response:
    return _static_response(_daemon(request), "index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return _static_response(_daemon(request), name)


def _static_response(d: Daemon, name: str) -> web.Response:
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    kind = types[Path(name).suffix]
    return web.Response(body=d._static[name], content_type=kind, charset="utf-8")


def _frame(event_id: int, name: str, data: str) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


async def _events(request: web.Request) -> web.StreamResponse:
    d = _daemon(request)
    subscriber = d.hub.subscribe()
    if subscriber is None:
        return json_error(429 if not d.hub.closed else 503, "too many event streams")
    response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
    try:
        await response.prepare(request)
        await response.write(_frame(0, "snapshot", json.dumps(d.snapshot())))
        await response.write(_frame(0, "lookups", json.dumps(d.activity.to_json())))
        while True:
            item = await subscriber.queue.get()
            if item is None:
                if subscriber.overflowed:
                    await response.write(_frame(0, "overflow", "{}"))
                break
            await response.write(_frame(*item))
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        d.hub.unsubscribe(subscriber)
    return response


async def _action(request: web.Request, run: Any) -> web.Response:
    d = _daemon(request)
    if not d.guard.authorized(request):
        return json_error(
            401, "unauthorized: a bearer token is needed", **{"WWW-Authenticate": "Bearer"}
        )
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return json_error(400, "the body must be a JSON object")
    try:
        return _json(await run(d.node, d.activity, body))
    except actions.BadRequestError as exc:
        return json_error(400, str(exc))
    except ValidationError as exc:
        return json_error(422, str(exc) or type(exc).__name__)
    except KadError as exc:
        return json_error(502, str(exc) or type(exc).__name__)


def _post(run: Any) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await _action(request, run)

    return handler


async def _shutdown(request: web.Request) -> web.Response:
    d = _daemon(request)
    if not d.guard.authorized(request):
        return json_error(
            401, "unauthorized: a bearer token is needed", **{"WWW-Authenticate": "Bearer"}
        )
    d.request_stop()
    return _json({"stopping": True}, status=202)


def _routes(app: web.Application) -> None:
    p = f"/api/v{API_VERSION}"
    app.router.add_get("/", _page, allow_head=False)
    app.router.add_get("/static/{name}", _static, allow_head=False)
    app.router.add_get("/metrics", _metrics, allow_head=False)
    app.router.add_get(f"{p}/version", _version, allow_head=False)
    app.router.add_get(f"{p}/status", _status, allow_head=False)
    app.router.add_get(f"{p}/routing-table", _routing_table, allow_head=False)
    app.router.add_get(f"{p}/records", _records, allow_head=False)
    app.router.add_get(f"{p}/lookups", _lookups, allow_head=False)
    app.router.add_get(f"{p}/events", _events, allow_head=False)
    app.router.add_post(f"{p}/put", _post(actions.put))
    app.router.add_post(f"{p}/get", _post(actions.get))
    app.router.add_post(f"{p}/ping", _post(actions.ping))
    app.router.add_post(f"{p}/lookup", _post(actions.lookup))
    app.router.add_post(f"{p}/shutdown", _shutdown)
