"""Helpers for the loopback integration tests: networks of real UDP nodes, bounded waits and an
event-loop runner that records every exception asyncio reports.

Everything here binds 127.0.0.1 or ::1 on port 0, and every wait has a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from nautilus_kad import KadConfig, Node, NodeId, key_id

T = TypeVar("T")

JOIN_TIMEOUT = 10.0
"""Upper bound for one node to join a loopback network."""


class LoopRunner:
    """An :class:`asyncio.Runner` whose loop records every exception handed to its exception
    handler (callbacks that raised, futures whose exception nobody retrieved …).

    ``run`` bounds each coroutine by a timeout, so a hang fails the test instead of stalling
    the suite.
    """

    def __init__(
        self,
        *,
        debug: bool = False,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self._runner = asyncio.Runner(debug=debug, loop_factory=loop_factory)
        self.loop_errors: list[dict[str, Any]] = []
        loop = self._runner.get_loop()
        loop.set_exception_handler(self._record)

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)
        loop.default_exception_handler(context)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._runner.get_loop()

    def run(self, coro: Awaitable[T], timeout: float) -> T:
        return self._runner.run(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> LoopRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_loop_errors(errors: Sequence[dict[str, Any]]) -> str:
    return (
        "; ".join(f"{ctx.get('message')!r}: {ctx.get('exception')!r}" for ctx in errors[:5])
        or "none"
    )


def loopback_available(host: str) -> bool:
    """Whether a UDP socket can bind ``host`` (``::1`` is missing on some CI containers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def dead_address(host: str = "127.0.0.1") -> tuple[str, int]:
    """An address nobody listens on: a port the kernel gave us, released again at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return (host, port)


async def start_network(
    count: int,
    *,
    host: str = "127.0.0.1",
    config: KadConfig | None = None,
    batch: int = 1,
) -> list[Node]:
    """Start ``count`` nodes on ``host``: one seed, the rest joining through it.

    ``batch`` nodes join concurrently at a time. On any failure every node already started is
    stopped before the error propagates.
    """
    nodes: list[Node] = []
    try:
        seed = await asyncio.wait_for(Node.start(host, 0, config=config), JOIN_TIMEOUT)
        nodes.append(seed)
        seed_address = seed.address
        while len(nodes) < count:
            n = min(batch, count - len(nodes))
            started = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        Node.start(host, 0, bootstrap=[seed_address], config=config)
                        for _ in range(n)
                    )
                ),
                JOIN_TIMEOUT,
            )
            nodes.extend(started)
    except BaseException:
        await stop_all(nodes)
        raise
    return nodes


async def stop_all(nodes: Sequence[Node]) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.stop(handoff=False), 5.0)


def true_closest(
    nodes: Sequence[Node], target: int, k: int, exclude: NodeId | None = None
) -> list[NodeId]:
    """Ground truth: the ``k`` node ids of ``nodes`` closest to ``target`` by XOR."""
    ids = [n.node_id for n in nodes if n.node_id != exclude]
    ids.sort(key=lambda node_id: node_id ^ target)
    return ids[:k]


def holds(node: Node, key: bytes) -> bool:
    """Whether ``node`` keeps a record under application key ``key`` (clock-independent)."""
    stored = set(node.engine.store.keys())
    return key_id(key) in stored


def dropped_total(stats: dict[str, int]) -> int:
    """Sum of every ``rx.dropped.<reason>`` counter (excluding the ``rx.dropped`` total)."""
    return sum(v for key, v in stats.items() if key.startswith("rx.dropped."))


@contextlib.contextmanager
def raw_udp_socket(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A plain non-blocking UDP socket bound to an ephemeral loopback port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, 0))
        yield sock
    finally:
        sock.close()


def drain(sock: socket.socket, limit: int = 10_000) -> list[tuple[bytes, Any]]:
    """Everything already queued on a non-blocking socket (at most ``limit`` datagrams)."""
    received: list[tuple[bytes, Any]] = []
    for _ in range(limit):
        try:
            received.append(sock.recvfrom(65535))
        except (BlockingIOError, InterruptedError):
            break
    return received


async def wait_for_anything(sock: socket.socket, seconds: float) -> list[tuple[bytes, Any]]:
    """Datagrams arriving on ``sock`` within ``seconds`` (bounded wait; usually none).

    Polls instead of ``loop.sock_recvfrom``, which uvloop does not implement.
    """
    loop = asyncio.get_running_loop()
    received = drain(sock)
    deadline = loop.time() + seconds
    while loop.time() < deadline and len(received) < 10_000:
        await asyncio.sleep(0.01)
        received.extend(drain(sock))
    return received


def random_key(rng: random.Random, prefix: bytes = b"key") -> bytes:
    return prefix + rng.randbytes(8).hex().encode()
