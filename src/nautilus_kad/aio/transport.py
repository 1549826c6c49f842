"""Drive a :class:`~nautilus_kad.core.engine.KadEngine` from an asyncio UDP socket.

The protocol object is the engine's only contact with the world: datagrams in, datagrams out,
one timer handle armed at the engine's next deadline, and events handed to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from ..core.engine import KadEngine
from ..core.events import Event
from ..core.messages import Address

_log = logging.getLogger("nautilus_kad.transport")

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
"""Large enough to absorb a burst (a flood, or 200 peers answering at once) without loss."""

SEND_CHUNK = 8
"""Within a burst, what the engine queued goes out after every this many inputs (datagrams
handled, commands started), not only when the burst ends: the peer starts on the first
answers while we handle the rest. Sent once per burst, a client and its server took turns,
each idle while the other worked; sent at once, every datagram cost the receiver a wake-up.
With a client and a server on two otherwise idle cores (benchmarks.peer), chunks of 8 gave
1.3 times the PINGs and 1.5 times the FIND_NODEs per second of once per burst, for the same
CPU per request; sending at once gave no more than once per burst, at 25 % more CPU."""


class LoopClock:
    """The engine's clock: wall-clock aligned (record timestamps are compared between nodes)
    but advancing monotonically (timers must never jump), at full resolution: uvloop's
    ``loop.time()`` ticks in whole milliseconds, too coarse for loopback round-trip times."""

    __slots__ = ("loop", "offset")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.offset = time.time() - time.monotonic()

    def now(self) -> float:
        return time.monotonic() + self.offset

    def loop_time_of(self, deadline: float) -> float:
        """The loop's time at which the engine's clock reaches ``deadline``."""
        return self.loop.time() + (deadline - self.now())


class EngineProtocol(asyncio.DatagramProtocol):
    """Feeds an engine from a datagram endpoint and flushes what it produces."""

    def __init__(
        self,
        engine: KadEngine,
        clock: LoopClock,
        on_event: Callable[[Event], None],
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.loop = clock.loop
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._flush_due = False
        self._inputs = 0
        """Inputs (datagrams, commands) since what the engine queued last went out."""
        self._bursts = type(self.loop).__module__.startswith("uvloop")
        """uvloop hands over every datagram one readiness event brought (up to 32) before
        it runs what was scheduled, so one flush can serve them all; the standard loop reads
        one datagram per callback, where a deferred flush would only add a step."""
        self.send_errors = 0

    # --- clock -------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    # --- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not every loop's datagram transport subclasses DatagramTransport (the selector one
        # does not), so this is a cast, not a check.
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.engine.receive_datagram(data, (addr[0], addr[1]), self.now())
        except Exception:
            # The decoder rejects bad input with its own error, so reaching this is a bug in
            # the engine. One datagram must not stop the node: count it, log the first one in
            # full, and keep serving.
            self.engine.stats["engine.errors"] += 1
            if self.engine.stats["engine.errors"] == 1:
                _log.exception("engine failed on a datagram from %s; continuing", addr[0])
        self.flush_soon()

    def flush_soon(self) -> None:
        """Flush once the loop has handed over the rest of this burst (uvloop), or now.

        Datagrams of one readiness event, and the requests that coroutines woken by their
        answers start in the same pass, then share one flush: events are handed out and the
        engine's timer is computed once per burst instead of once per datagram. What is
        queued goes out every :data:`SEND_CHUNK` inputs, and with the flush."""
        if not self._bursts:
            self.flush()
            return
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_burst)
        self._inputs += 1
        if self._inputs >= SEND_CHUNK:  # the burst goes on: let the first datagrams go
            self._inputs = 0
            self._send(self.engine.datagrams_to_send())

    def _flush_burst(self) -> None:
        self._flush_due = False
        self.flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable after a peer died) surface here; the request's own
        # timeout already handles the peer, so this is only counted.
        self.engine.stats["transport.icmp_errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_timer()

    # --- engine plumbing -----------------------------------------------------------------

    def flush(self) -> None:
        """Send what the engine queued, hand out its events, re-arm its timer."""
        self._inputs = 0
        self._send(self.engine.datagrams_to_send())
        event = self.engine.next_event()
        while event is not None:
            self.on_event(event)
            event = self.engine.next_event()
        self._arm_timer()

    def _send(self, out: list[tuple[bytes, Address]]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data, address in out:
            try:
                transport.sendto(data, address)
            except (OSError, ValueError) as exc:
                self.send_errors += 1
                _log.debug("send to %s failed: %s", address, exc)

    def _arm_timer(self) -> None:
        deadline = self.engine.get_timer()
        if deadline >= self._timer_at and self._timer is not None:
            return
        self.cancel_timer()
        self._timer_at = deadline
        self._timer = self.loop.call_at(self.clock.loop_time_of(deadline), self._on_timer)

    def _on_timer(self) -> None:
        # asyncio may fire a hair early (within its clock resolution): the deadline has come.
        now = max(self.now(), self._timer_at)
        self._timer = None
        self._timer_at = float("inf")
        self.engine.handle_timer(now)
        self.flush()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = float("inf")

    def close(self) -> None:
        self.cancel_timer()
        if self.transport is not None:
            self.transport.close()


async def open_endpoint(
    engine: KadEngine,
    clock: LoopClock,
    host: str,
    port: int,
    on_event: Callable[[Event], None],
) -> tuple[EngineProtocol, Address]:
    """Bind a UDP socket at ``host:port`` (0 = any free port) and attach the engine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    _transport, protocol = await clock.loop.create_datagram_endpoint(
        lambda: EngineProtocol(engine, clock, on_event),
        local_addr=(host, port),
        family=family,
    )
    sockname = _transport.get_extra_info("sockname")
    address: Address = (sockname[0], sockname[1])
    return protocol, address


@functools.lru_cache(maxsize=64)
def is_local_ip(ip: str) -> bool:
    """Whether ``ip`` is one of this host's addresses: only then can a socket bind to it.
    A node bound to 0.0.0.0 asks it of its adopted external IP (no datagram is sent)."""
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((ip, 0))
    except (OSError, ValueError):
        return False
    return True
