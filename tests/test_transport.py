"""The asyncio driver (aio/transport.py, aio/node.py): one flush per burst of datagrams,
what is queued sent every few datagrams of a burst, and addresses that are already numeric
skip the resolver."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from nautilus_kad import Node
from nautilus_kad.aio import node as node_module
from nautilus_kad.aio.runner import run
from nautilus_kad.aio.transport import SEND_CHUNK, EngineProtocol


@pytest.mark.integration
def test_a_burst_of_requests_is_answered_in_full_with_fewer_flushes_than_datagrams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty PINGs sent in one go reach the server (on uvloop) in one readiness event: each is
    answered, and the server's engine is drained (and its timer recomputed) fewer times than
    datagrams arrived (once per datagram before)."""
    flushes: dict[int, int] = {}
    flush = EngineProtocol.flush

    def counting(self: EngineProtocol) -> None:
        flushes[id(self)] = flushes.get(id(self), 0) + 1
        flush(self)

    monkeypatch.setattr(EngineProtocol, "flush", counting)

    async def main() -> None:
        async with await Node.start(port=0) as server, await Node.start(port=0) as client:
            await client.ping(server.address)
            protocol = server._protocol
            assert protocol is not None
            received = server.engine.stats["rx.datagrams"]
            before = flushes.get(id(protocol), 0)
            results = await asyncio.gather(*(client.ping(server.address) for _ in range(20)))
            assert len(results) == 20
            arrived = server.engine.stats["rx.datagrams"] - received
            assert arrived >= 20
            assert flushes.get(id(protocol), 0) - before < arrived

    run(asyncio.wait_for(main(), 20))  # uvloop: the loop the daemon and the CLI run


@pytest.mark.integration
def test_answers_leave_during_a_burst_every_few_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within a burst the server does not hold its answers until the burst ends: whenever it
    sends, it has handled at most SEND_CHUNK datagrams since it last sent (the client works
    on the first answers meanwhile); its housekeeping still runs fewer times than datagrams
    arrived. (Before, a burst of 20 was answered in one go after the 20th.)"""
    handled: dict[int, int] = {}
    worst: dict[int, int] = {}
    receive = EngineProtocol.datagram_received
    send = EngineProtocol._send

    def counting_receive(self: EngineProtocol, data: bytes, addr: tuple[object, ...]) -> None:
        handled[id(self)] = handled.get(id(self), 0) + 1
        receive(self, data, addr)

    def recording_send(self: EngineProtocol, out: list[tuple[bytes, tuple[str, int]]]) -> None:
        if out:
            worst[id(self)] = max(worst.get(id(self), 0), handled.get(id(self), 0))
            handled[id(self)] = 0
        send(self, out)

    monkeypatch.setattr(EngineProtocol, "datagram_received", counting_receive)
    monkeypatch.setattr(EngineProtocol, "_send", recording_send)

    async def main() -> None:
        async with await Node.start(port=0) as server, await Node.start(port=0) as client:
            await client.ping(server.address)
            protocol = server._protocol
            assert protocol is not None
            received = server.engine.stats["rx.datagrams"]
            sent = server.engine.stats["tx.datagrams"]
            worst.clear()
            results = await asyncio.gather(*(client.ping(server.address) for _ in range(20)))
            assert len(results) == 20
            assert server.engine.stats["rx.datagrams"] - received >= 20
            assert server.engine.stats["tx.datagrams"] - sent >= 20
            assert 0 < worst[id(protocol)] <= SEND_CHUNK

    run(asyncio.wait_for(main(), 20))  # uvloop: the loop the daemon and the CLI run


def test_numeric_addresses_skip_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A canonical IP literal and a valid port are used as they are; anything else (a name,
    a non-canonical literal) still goes through getaddrinfo, which turns it into one."""
    asked: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def spy(host: object, *args: object, **kwargs: object) -> object:
            asked.append(host)
            return await real(host, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "getaddrinfo", spy)
        inet, inet6 = node_module.socket.AF_INET, node_module.socket.AF_INET6
        assert await node_module._resolve(("127.0.0.1", 7400), inet) == ("127.0.0.1", 7400)
        assert await node_module._resolve("127.0.0.1:7401", inet) == ("127.0.0.1", 7401)
        assert await node_module._resolve(("::1", 7402), inet6) == ("::1", 7402)
        assert asked == []
        assert await node_module._resolve(("localhost", 7403), inet) == ("127.0.0.1", 7403)
        assert await node_module._resolve(("0:0::1", 7404), inet6) == ("::1", 7404)
        assert asked == ["localhost", "0:0::1"]
        with contextlib.suppress(Exception):  # a port out of range: the resolver decides
            await node_module._resolve(("127.0.0.1", 70000), inet)
        assert asked[-1] == "127.0.0.1"

    asyncio.run(main())
