"""Channels for the asyncio node: ``Node.connect``, ``Node.incoming`` and :class:`Channel`.

The core (core/traversal.py) does the protocol; this module turns its events into awaitable
objects. Each channel keeps a bounded queue of received datagrams (``RECV_QUEUE``; more is
dropped and counted as ``channel.rx.overflow``), and so does the queue of incoming channels
nobody has accepted yet (``INCOMING_QUEUE``; more are closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from ..core.channel import MAX_CHANNEL_PAYLOAD
from ..core.errors import ChannelClosedError, ConnectError
from ..core.events import (
    ChannelClosed,
    ChannelData,
    ChannelOpened,
    ChannelPath,
    ConnectFailed,
    Event,
)
from ..core.ids import NodeId
from ..core.messages import Address

if TYPE_CHECKING:
    from ..core.channel import Channel as CoreChannel
    from ..core.engine import KadEngine
    from .transport import EngineProtocol

__all__ = ["MAX_CHANNEL_PAYLOAD", "Channel", "ChannelHub"]

RECV_QUEUE = 1024
INCOMING_QUEUE = 64
_CLOSED = object()


class Channel:
    """An authenticated, encrypted datagram channel to one peer (direct or relayed).

    ``send`` takes at most :data:`MAX_CHANNEL_PAYLOAD` bytes (1 163) per datagram; delivery
    is that of UDP (no retransmission, no ordering). ``path`` is ``"direct"`` or
    ``"relayed"`` and changes to direct when an upgrade succeeds; ``rtt`` is the smoothed
    round-trip time of the channel's keepalives (seconds, None before the first).
    """

    def __init__(
        self, hub: ChannelHub, handle: int, peer_id: NodeId, path: str, address: Address,
        rtt: float | None,
    ) -> None:  # fmt: skip
        self._hub = hub
        self.handle = handle
        self.peer_id: bytes = peer_id.to_bytes32()
        self._path = path
        self.address = address
        """Where its datagrams go: the peer, or the relay while relayed."""
        self._rtt = rtt
        self.close_reason: str | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue(RECV_QUEUE + 1)

    @property
    def path(self) -> str:
        """``"direct"`` or ``"relayed"`` (now)."""
        core = self._hub.core(self.handle)
        return core.path if core is not None else self._path

    @property
    def rtt(self) -> float | None:
        """Smoothed round-trip time in seconds (punches, keepalives), None before any."""
        core = self._hub.core(self.handle)
        return core.rtt if core is not None and core.rtt is not None else self._rtt

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    async def send(self, data: bytes) -> None:
        """Send one datagram to the peer (raises ValueError when it is too large,
        :class:`ChannelClosedError` when the channel is closed)."""
        if len(data) > MAX_CHANNEL_PAYLOAD:
            raise ValueError(f"a channel datagram carries at most {MAX_CHANNEL_PAYLOAD} bytes")
        if self.close_reason is not None:
            raise ChannelClosedError(f"channel closed: {self.close_reason}")
        self._hub.send(self, bytes(data))

    async def recv(self) -> bytes:
        """The next datagram from the peer (raises :class:`ChannelClosedError` once the
        channel is closed and nothing is left)."""
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # later calls fail too
            raise ChannelClosedError(f"channel closed: {self.close_reason}")
        assert isinstance(item, bytes)
        return item

    async def close(self) -> None:
        """Close the channel (the peer is told; a relay circuit is released)."""
        if self.close_reason is None:
            self._hub.close(self)

    def _deliver(self, data: bytes) -> bool:
        if self._queue.qsize() >= RECV_QUEUE:
            return False
        self._queue.put_nowait(data)
        return True

    def _closed(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_CLOSED)

    def __repr__(self) -> str:
        state = f"closed: {self.close_reason}" if self.closed else self.path
        return f"Channel({self.peer_id.hex()[:12]}…, {state})"


HUB_EVENTS = frozenset({ChannelData, ChannelOpened, ChannelPath, ChannelClosed, ConnectFailed})
"""The event classes :meth:`ChannelHub.on_event` handles (the node hands it no others)."""


class ChannelHub:
    """The channels and connects of one node, fed by the engine's events."""

    def __init__(self, engine: KadEngine, protocol: Callable[[], EngineProtocol | None]) -> None:
        self._engine = engine
        self._protocol = protocol
        self._connects: dict[int, asyncio.Future[Channel]] = {}
        self._channels: dict[int, Channel] = {}
        self._queue: asyncio.Queue[Channel] | None = None
        self._stopped = False

    @property
    def _incoming(self) -> asyncio.Queue[Channel]:
        """Channels peers opened to us, waiting for :meth:`incoming`. Made on first use:
        most nodes never see one, and an empty queue costs about 2.5 KiB in every node."""
        if self._queue is None:
            self._queue = asyncio.Queue(INCOMING_QUEUE)
        return self._queue

    def _now_and_flush(self) -> tuple[float, EngineProtocol]:
        protocol = self._protocol()
        if protocol is None or self._stopped:
            raise ConnectError("stopped", "node is stopped")
        return protocol.now(), protocol

    async def connect(self, node_id: NodeId, timeout: float) -> Channel:
        now, protocol = self._now_and_flush()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Channel] = loop.create_future()
        qid = self._engine.traversal.connect(node_id, now, timeout)
        self._connects[qid] = future
        protocol.flush()
        try:
            # The core ends every connect by its deadline; this guard only covers a stalled
            # event loop or a stopped node.
            return await asyncio.wait_for(asyncio.shield(future), timeout + 1.0)
        except TimeoutError:
            self._engine.traversal.connector.cancel(qid)
            raise ConnectError("timeout", f"no channel within {timeout:g} s") from None
        finally:
            self._connects.pop(qid, None)

    async def incoming(self) -> AsyncIterator[Channel]:
        while not self._stopped:
            channel = await self._incoming.get()
            if channel.handle < 0:  # the stop marker
                return
            yield channel

    def send(self, channel: Channel, data: bytes) -> None:
        now, protocol = self._now_and_flush()
        error = self._engine.traversal.send(channel.handle, data, now)
        protocol.flush()
        if error is not None:
            raise ChannelClosedError(error)

    def close(self, channel: Channel) -> None:
        try:
            now, protocol = self._now_and_flush()
        except ConnectError:
            channel._closed("node stopped")
            return
        self._engine.traversal.close(channel.handle, now)
        protocol.flush()
        channel._closed("closed")

    def stop(self) -> None:
        """The node stops: close every channel, fail every connect, end ``incoming``."""
        if self._stopped:
            return
        protocol = self._protocol()
        if protocol is not None:
            for channel in list(self._channels.values()):
                self._engine.traversal.close(channel.handle, protocol.now())
            protocol.flush()
        self._stopped = True
        for channel in list(self._channels.values()):
            channel._closed("node stopped")
        self._channels.clear()
        for future in self._connects.values():
            if not future.done():
                future.set_exception(ConnectError("stopped", "node stopped"))
        if self._queue is not None:  # else nobody waits in incoming()
            marker = Channel(self, -1, NodeId(0), "direct", ("0.0.0.0", 0), None)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(marker)

    def on_event(self, event: Event) -> bool:
        """Handle a channel event (True), or leave the event to the node (False)."""
        if isinstance(event, ChannelData):
            channel = self._channels.get(event.channel)
            if channel is not None and not channel._deliver(event.data):
                self._engine.stats["channel.rx.overflow"] += 1
        elif isinstance(event, ChannelOpened):
            channel = Channel(self, event.channel, event.peer_id, event.path, event.address,
                              event.rtt)  # fmt: skip
            if event.query_id:
                future = self._connects.get(event.query_id)
                if future is None or future.done():
                    self._engine.traversal.close(event.channel, self._protocol_now())
                    return True
                self._channels[event.channel] = channel
                future.set_result(channel)
            else:
                try:
                    self._incoming.put_nowait(channel)
                except asyncio.QueueFull:
                    self._engine.stats["channel.incoming.overflow"] += 1
                    self._engine.traversal.close(event.channel, self._protocol_now())
                    return True
                self._channels[event.channel] = channel
        elif isinstance(event, ChannelPath):
            channel = self._channels.get(event.channel)
            if channel is not None:
                channel._path, channel.address, channel._rtt = event.path, event.address, event.rtt
        elif isinstance(event, ChannelClosed):
            channel = self._channels.pop(event.channel, None)
            if channel is not None:
                channel._closed(event.reason)
        elif isinstance(event, ConnectFailed):
            future = self._connects.get(event.query_id)
            if future is not None and not future.done():
                future.set_exception(ConnectError(event.code, f"{event.code}: {event.reason}"))
        else:
            return False
        return True

    def _protocol_now(self) -> float:
        protocol = self._protocol()
        return protocol.now() if protocol is not None else 0.0

    def core(self, handle: int) -> CoreChannel | None:
        return self._engine.traversal.channels.get(handle)


async def echo_channels(incoming: AsyncIterator[Channel]) -> None:
    """``run --echo``: every datagram a channel brings is sent back on it."""

    async def echo(channel: Channel) -> None:
        with contextlib.suppress(ChannelClosedError):
            while True:
                await channel.send(await channel.recv())

    tasks: set[asyncio.Task[None]] = set()
    async for channel in incoming:
        task = asyncio.get_running_loop().create_task(echo(channel))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
