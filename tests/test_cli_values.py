"""``put --file`` and ``get --out`` (issue 15): values larger than a datagram from the command
line, of every kind, and the one-line error when pieces are missing.

The network runs in a background thread's event loop (real UDP on loopback); the command
runs in-process in the test's thread, with its own short-lived client node, as a user's
would.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from netutil import start_network, stop_all

from nautilus_kad import KadConfig, Node
from nautilus_kad.cli import cli
from nautilus_kad.core.blob import MAGIC, BlobConfig, build_tree
from nautilus_kad.core.limits import OPEN_VALUE_LIMIT

pytestmark = pytest.mark.integration

CONFIG = KadConfig(k=4)


class BackgroundNetwork:
    """Nodes served by an event loop in another thread."""

    def __init__(self, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes: list[Node] = self.call(start_network(count, config=CONFIG), 60)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def address(self) -> str:
        host, port = self.nodes[0].address
        return f"{host}:{port}"

    def close(self) -> None:
        try:
            self.call(stop_all(self.nodes), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def network() -> Iterator[BackgroundNetwork]:
    net = BackgroundNetwork(5)
    try:
        yield net
    finally:
        net.close()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip())


def test_put_file_and_get_out_of_every_kind(network: BackgroundNetwork, tmp_path: Path) -> None:
    value = random.Random(4).randbytes(64 * 1024)
    source = tmp_path / "in.bin"
    source.write_bytes(value)
    b = ["--bootstrap", network.address]

    put = invoke("put", "doc", "--file", str(source), *b)
    assert put.exit_code == 0, put.output
    fields = _fields(put.stdout)
    assert re.fullmatch(r"\d+ \(each on at least \d+ nodes\)", fields["pieces"])
    get = invoke("get", "doc", "--out", str(tmp_path / "open.bin"), *b)
    assert get.exit_code == 0, get.output
    assert get.stdout == f"wrote {len(value)} bytes to {tmp_path / 'open.bin'}\n"
    assert (tmp_path / "open.bin").read_bytes() == value

    put = invoke("put", "--immutable", "--file", str(source), *b)
    assert put.exit_code == 0, put.output
    key = _fields(put.stdout)["key"]
    get = invoke("get", "--immutable", key, "--out", str(tmp_path / "imm.bin"), *b)
    assert get.exit_code == 0, get.output
    assert (tmp_path / "imm.bin").read_bytes() == value

    key_file = tmp_path / "owner.pem"
    put = invoke("put", "--signed", "big", "--file", str(source), "--key-file", str(key_file), *b)
    assert put.exit_code == 0, put.output
    owner = _fields(put.stdout)["owner"]
    out = tmp_path / "signed.bin"
    get = invoke("get", "--signed", owner, "big", "--out", str(out), "--show-seq", *b)
    assert get.exit_code == 0, get.output
    assert get.stdout.startswith("seq 1\n")
    assert out.read_bytes() == value


def test_missing_pieces_are_a_one_line_error(network: BackgroundNetwork, tmp_path: Path) -> None:
    value = random.Random(5).randbytes(32_000)
    source = tmp_path / "in.bin"
    source.write_bytes(value)
    b = ["--bootstrap", network.address]
    put = invoke("put", "gone", "--file", str(source), *b)
    assert put.exit_code == 0, put.output
    pieces = build_tree(value, OPEN_VALUE_LIMIT, BlobConfig()).pieces
    chunks = [key for key, data in pieces if not data.startswith(MAGIC)]

    async def drop() -> None:
        for node in network.nodes:
            for key in chunks[:3]:
                node.engine.store.remove(key)

    network.call(drop())
    out = tmp_path / "never.bin"
    get = invoke("get", "gone", "--out", str(out), *b)
    assert get.exit_code == 1
    lines = get.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: could not find 3 of {len(pieces)} pieces of the value "
        f"(3000 of {len(value)} bytes missing)"
    ), get.stderr
    assert "Traceback" not in get.stderr
    assert not out.exists()
