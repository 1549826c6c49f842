"""The daemon's local API in one process: real nodes on loopback UDP, the API on a loopback
TCP port, requests over real HTTP (aiohttp's client). Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from nautilus_kad import Node
from nautilus_kad.daemon.apifile import read_api_file
from nautilus_kad.daemon.hub import QUEUE_LIMIT, EventHub
from nautilus_kad.daemon.server import MAX_BODY, Daemon

pytestmark = pytest.mark.integration
TIMEOUT = 30.0


@asynccontextmanager
async def daemon_on_network(
    tmp_path: Path, peers: int = 2, **options: Any
) -> AsyncIterator[tuple[Daemon, list[Node]]]:
    nodes = [await Node.start(port=0)]
    for _ in range(peers):
        nodes.append(await Node.start(port=0, bootstrap=[nodes[0].address]))
    daemon = Daemon(nodes[-1], api_file=tmp_path / "api", **options)
    await daemon.start()
    try:
        yield daemon, nodes
    finally:
        await daemon.close()
        daemon.remove_api_file()
        for node in nodes:
            await node.stop(handoff=False)


def run(
    tmp_path: Path,
    test: Callable[[Daemon, list[Node], aiohttp.ClientSession], Awaitable[None]],
    **options: Any,
) -> None:
    async def main() -> None:
        async with daemon_on_network(tmp_path, **options) as (daemon, nodes):  # noqa: SIM117
            async with aiohttp.ClientSession(base_url=daemon.url) as http:
                await test(daemon, nodes, http)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def auth(daemon: Daemon) -> dict[str, str]:
    return {"Authorization": f"Bearer {daemon.token}"}


def test_the_api_file_is_private_and_usable_at_once_and_goes_away(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        path = tmp_path / "api"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = read_api_file(path)
        assert info is not None
        assert info.url == daemon.url and info.token == daemon.token
        assert info.node_id == nodes[-1].node_id.hex()
        async with http.get("/api/v1/version") as r:
            assert r.status == 200
            assert (await r.json())["api"] == 1

    run(tmp_path, test)
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("path", ["/", "/api/v1/status", "/metrics", "/api/v1/events"])
def test_a_foreign_host_header_is_refused(tmp_path: Path, path: str) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        port = daemon.port
        async with http.get(path, headers={"Host": f"evil.example:{port}"}) as r:
            assert r.status == 403
            assert "Host" in (await r.json())["error"]
        async with http.get(path if path != "/api/v1/events" else "/api/v1/status") as r:
            assert r.status == 200  # the same request with our own Host passes

    run(tmp_path, test)


def test_a_cross_origin_action_is_refused_even_with_the_token(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        target = f"{nodes[0].address[0]}:{nodes[0].address[1]}"
        body = json.dumps({"address": target})
        for origin in ("http://evil.example", f"http://127.0.0.1:{daemon.port + 1}", "null"):
            headers = {**auth(daemon), "Origin": origin, "Content-Type": "text/plain"}
            async with http.post("/api/v1/ping", data=body, headers=headers) as r:
                assert r.status == 403, origin
        assert not daemon.activity.recent  # the handler never ran
        same = {**auth(daemon), "Origin": f"http://127.0.0.1:{daemon.port}"}
        async with http.post("/api/v1/ping", data=body, headers=same) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["node_id"] == nodes[0].node_id.hex()
            assert not [h for h in r.headers if h.lower().startswith("access-control-")]

    run(tmp_path, test)


def test_actions_need_the_token_and_post(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        for headers in ({}, {"Authorization": "Bearer " + "0" * 64}, {"Authorization": "x"}):
            async with http.post("/api/v1/shutdown", json={}, headers=headers) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == "Bearer"
        async with http.get("/api/v1/put") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"
        async with http.options("/api/v1/status") as r:
            assert r.status == 405
            assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        big = {"key": "00", "value": "00" * MAX_BODY}
        async with http.post("/api/v1/put", json=big, headers=auth(daemon)) as r:
            assert r.status == 413
        async with http.post("/api/v1/put", data=b"[1, 2", headers=auth(daemon)) as r:
            assert r.status == 400
        async with http.post("/api/v1/get", json={"key": "zz"}, headers=auth(daemon)) as r:
            assert r.status == 400
            assert "hex" in (await r.json())["error"]

    run(tmp_path, test)


def test_the_page_has_a_strict_policy(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        async with http.get("/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["Cache-Control"] == "no-store"
        async with http.get("/static/../api") as r:
            assert r.status in (403, 404)

    run(tmp_path, test)


def test_event_streams_are_bounded(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        first = await http.get("/api/v1/events")
        second = await http.get("/api/v1/events")
        try:
            assert first.status == second.status == 200
            assert first.headers["Content-Type"] == "text/event-stream"
            line = await asyncio.wait_for(first.content.readline(), 5)
            assert line.startswith(b"id: ")
            async with http.get("/api/v1/events") as third:
                assert third.status == 429
        finally:
            first.close()
            second.close()

    run(tmp_path, test, max_event_clients=2)


def test_a_stalled_reader_is_cut_off_not_buffered() -> None:
    async def main() -> None:
        hub = EventHub(max_clients=1)
        subscriber = hub.subscribe()
        assert subscriber is not None and hub.subscribe() is None
        for i in range(10 * QUEUE_LIMIT):
            hub.publish("tick", {"i": i})
        assert subscriber.overflowed and hub.overflows == 1
        assert subscriber.queue.qsize() <= QUEUE_LIMIT
        items = [subscriber.queue.get_nowait() for _ in range(subscriber.queue.qsize())]
        assert items[-1] is None  # the stream ends; the browser reconnects afresh

    asyncio.run(main())


def test_reads_show_the_table_records_and_lookups(tmp_path: Path) -> None:
    async def test(daemon: Daemon, nodes: list[Node], http: aiohttp.ClientSession) -> None:
        node = daemon.node
        body = {"key": b"k1".hex(), "value": b"v1".hex()}
        async with http.post("/api/v1/put", json=body, headers=auth(daemon)) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["acks"] >= 1
        async with http.post("/api/v1/get", json={"key": b"k1".hex()}, headers=auth(daemon)) as r:
            got = await r.json()
            assert got["found"] and bytes.fromhex(got["value"]) == b"v1"
        async with http.get("/api/v1/routing-table") as r:
            table = await r.json()
        listed = {c["node_id"] for b in table["buckets"] for c in b["contacts"]}
        assert listed == {c.node_id.hex() for c in node.routing_table}
        for bucket in table["buckets"]:
            for contact in bucket["contacts"]:
                assert node.routing_table.bucket_of(int(contact["node_id"], 16)) == bucket["index"]
        async with http.get("/api/v1/records", params={"limit": "1"}) as r:
            records = await r.json()
            assert records["total"] == 1 and records["records"][0]["size"] == 2
        async with http.get("/api/v1/records", params={"limit": "501"}) as r:
            assert r.status == 400
        async with http.get("/api/v1/lookups") as r:
            lookups = await r.json()
        kinds = [(op["kind"], op["result"]) for op in lookups["recent"]]
        assert kinds == [("get", "ok"), ("put", "ok")]
        put = lookups["recent"][1]
        assert put["requests"] >= 1 and put["path"] and put["seconds"] > 0
        # Reported per query (a live loopback net answers in time unless the machine
        # stalls, so only the type is certain here; tests/test_query_timeouts.py counts).
        assert all(isinstance(op["timeouts"], int) for op in lookups["recent"])
        async with http.get("/api/v1/status") as r:
            status = await r.json()
            assert status["state"] == "ready" and status["records"] == 1
            assert status["contacts"] == len(node.routing_table)
            reach = status["reachability"]  # issue 11: the mode and what it rests on
            assert reach["mode"] == node.reachability["mode"] == "server" and reach["fixed"]
            assert set(reach["external"]) == set(reach["nat_class"]) == {"ipv4", "ipv6"}
            assert reach["since_s"] >= 0 and reach["probes"] == 0

    run(tmp_path, test)


def test_the_api_benchmark_runs(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.daemon_api",
            "--nodes",
            "3",
            "--requests",
            "5",
            "--json",
            str(out),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = json.loads(out.read_text())
    assert numbers["/metrics"]["bytes"] > 1000
    assert "ping rtt, API scraped" in numbers
