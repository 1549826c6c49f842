"""The daemon's live page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright through ``executable_path``; no browser is ever downloaded).

The daemon and its network run as subprocesses (the sync Playwright API owns this thread's
event loop). Without chromium these tests skip on a developer machine and FAIL when ``CI`` is
set: ``.ci/run`` installs it. Set ``NAUTILUS_KAD_SCREENSHOT=PATH`` to keep a screenshot.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import STARTUP_TIMEOUT, RunningNode, err, kad
from test_daemon_cli import READY, metrics

from nautilus_kad import key_id
from nautilus_kad.core.ids import NodeId
from nautilus_kad.daemon.apifile import ApiInfo, read_api_file

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the browser tests must run in CI (.ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        _unavailable("Debian's chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Net:
    def __init__(
        self, seed: RunningNode, peers: list[RunningNode], daemon: RunningNode, data_dir: Path
    ):
        self.seed, self.peers, self.daemon, self.data_dir = seed, peers, daemon, data_dir
        info = read_api_file(data_dir / "api")
        assert info is not None
        self.info: ApiInfo = info

    @property
    def url(self) -> str:
        return self.info.url

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    nodes: list[RunningNode] = []
    try:
        seed = RunningNode.start("--no-api")
        nodes.append(seed)
        seed.wait_until_listening()
        peers = []
        for _ in range(3):
            peer = RunningNode.start("--no-api", "--bootstrap", seed.address)
            nodes.append(peer)
            peers.append(peer)
        for peer in peers:
            peer.wait_until_listening()
        data_dir = tmp_path_factory.mktemp("live") / "daemon"
        daemon = RunningNode.start("--data-dir", str(data_dir), "--bootstrap", seed.address)
        nodes.append(daemon)
        daemon.wait_until_listening()
        daemon.wait_for_line(READY, STARTUP_TIMEOUT)
        yield Net(seed, peers, daemon, data_dir)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def page(browser: Any, net: Net) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.requests_seen = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requests_seen.append(request.url))  # type: ignore[attr-defined]
    response = page.goto(net.url + "/")
    assert response is not None and response.status == 200
    page.headers_seen = response.headers  # type: ignore[attr-defined]
    page.wait_for_selector("[data-testid=live].on", timeout=WAIT_MS)
    page.wait_for_selector("[data-testid=bucket-row]", timeout=WAIT_MS)
    try:
        yield page
    finally:
        context.close()


def test_bucket_rows_match_the_api(page: Any, net: Net) -> None:
    assert net.daemon.node_id[:12] in page.title()
    table = net.api("routing-table")
    expected = {str(b["index"]): len(b["contacts"]) for b in table["buckets"]}
    rows = page.locator("[data-testid=bucket-row]")
    shown = {
        rows.nth(i).get_attribute("data-bucket"): int(
            rows.nth(i).locator("[data-testid=bucket-contacts]").inner_text()
        )
        for i in range(rows.count())
    }
    assert shown == expected
    assert sum(shown.values()) == len(net.peers) + 1  # the seed and the three peers
    status = net.api("status")
    assert page.locator("[data-testid=state]").inner_text() == status["state"] == "ready"
    reach = page.locator("[data-testid=reachability]").inner_text()
    assert reach.startswith(status["reachability"]["mode"]), reach


def test_a_put_through_the_cli_shows_within_two_seconds_without_reload(
    page: Any, net: Net, tmp_path: Path
) -> None:
    page.evaluate("window.__sameDocument = 42")
    result = kad("put", "live-key", "live-value", "--data-dir", str(net.data_dir))
    assert result.returncode == 0, err(result)
    done = time.monotonic()
    key = key_id(b"live-key").hex()
    page.wait_for_selector(f"[data-testid=record-row][data-key='{key}']", timeout=2000)
    page.wait_for_selector("[data-testid=lookup-recent][data-kind=put]", timeout=2000)
    assert time.monotonic() - done < 2.0
    assert page.evaluate("window.__sameDocument") == 42  # no reload happened
    log = page.locator("[data-testid=event-log]").inner_text()
    assert "put " + key[:12] + " ok" in log
    shot = tmp_path / "live-page.png"
    page.locator("[data-testid=bucket-row]").first.click()  # show a bucket's contacts too
    page.wait_for_selector("[data-testid=contact-row]", timeout=WAIT_MS)
    page.locator("[data-testid=lookup-recent]").first.click()
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    keep = os.environ.get("NAUTILUS_KAD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_no_request_leaves_the_origin_and_the_policy_is_strict(page: Any, net: Net) -> None:
    csp = page.headers_seen["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    page.wait_for_timeout(1500)  # a snapshot or two arrive meanwhile
    assert page.requests_seen, "the page made no request at all?"
    foreign = [u for u in page.requests_seen if not u.startswith(net.url + "/")]
    assert foreign == []
    events = [u for u in page.requests_seen if u.endswith("/api/v1/events")]
    assert len(events) == 1  # one stream, no polling


class _EvilPage(http.server.BaseHTTPRequestHandler):
    body = b"<!doctype html><title>evil</title><p>nothing to see"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_page_cannot_drive_the_daemon(browser: Any, net: Net) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    before = metrics(net.url).get('nautilus_kad_api_requests_refused_total{reason="origin"}', 0)
    context = browser.new_context()
    try:
        evil = context.new_page()
        evil.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        # A "simple" request: no preflight, the browser sends it and hides the answer.
        evil.evaluate(
            """async (url) => {
                try {
                  await fetch(url + "/api/v1/shutdown", {method: "POST", mode: "no-cors",
                    headers: {"Content-Type": "text/plain"}, body: "{}"});
                } catch (e) {}
            }""",
            net.url,
        )
    finally:
        context.close()
        server.shutdown()
    after = metrics(net.url).get('nautilus_kad_api_requests_refused_total{reason="origin"}', 0)
    assert after == before + 1
    assert net.daemon.process.poll() is None
    assert net.api("status")["state"] == "ready"


def test_a_killed_peer_shows_its_failures(page: Any, net: Net) -> None:
    victim = net.peers[0]
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    own = NodeId.from_hex(net.daemon.node_id)
    bucket = 256 - (own ^ NodeId.from_hex(victim.node_id)).bit_length()
    row = page.locator(f"[data-testid=bucket-row][data-bucket='{bucket}']")
    row.click()
    contact = page.locator(f"[data-testid=contact-row][data-node='{victim.node_id}']")
    contact.wait_for(timeout=WAIT_MS)
    # A lookup of the dead peer's id asks it first; its request times out.
    lookup = kad("lookup", victim.node_id, "--data-dir", str(net.data_dir))
    assert lookup.returncode == 0, err(lookup)
    # The lookup waited on the dead peer in vain: it reports the timeout (API and page).
    done = net.api("lookups")["recent"][0]
    assert done["kind"] == "lookup" and done["target"] == victim.node_id
    assert done["timeouts"] >= 1
    recent = page.locator("[data-testid=lookup-recent][data-kind=lookup]").first
    recent.wait_for(timeout=WAIT_MS)
    lost = recent.locator("[data-testid=lookup-timeouts]")
    assert int(lost.inner_text()) == done["timeouts"]
    assert "bad" in (lost.get_attribute("class") or "")
    failures = contact.locator("[data-testid=contact-failures]")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if contact.count() == 0 or failures.inner_text() != "0":
            break
        page.wait_for_timeout(200)
    if contact.count():
        assert int(failures.inner_text()) >= 1
        assert "bad" in (failures.get_attribute("class") or "")
    else:  # dropped from the table: the event log says so
        assert f"{victim.node_id[:12]}" in page.locator("[data-testid=event-log]").inner_text()
