"""Every channel of one node: their datagrams in, punches, relay fallback, upgrades,
keepalives, application data out, and the events the driver sees.

Per channel (core/channel.py has one channel's keys and path):

* punching: a PING to each candidate address every ``punch_interval``, ``punch_rounds``
  times; a PONG answering one proves the path works both ways and makes it the channel's
  direct path (a public target, which has nothing to punch, adopts the address its peer's
  PINGs come from);
* relay fallback: after ``relay_after`` without a direct path (at once with ``relay_only``,
  or when both peers sit behind endpoint-dependent NATs) the channel uses its circuit;
* upgrade: while relayed, punch again every ``upgrade_interval`` (``upgrade_tries`` times);
  on a direct PONG, switch and release the circuit so the relay carries nothing more;
* keepalive: a PING on the path after ``keepalive`` without sending (it keeps the NAT
  mappings open and measures the round-trip time); closed after ``channel_idle`` silence.

Counters: ``channel.*``, and per NAT-class pair ``nat.punch.<ours>-<theirs>.*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .channel import (
    CLOSE,
    CLOSED,
    DATA,
    HEADER,
    KIND_CHANNEL,
    KIND_RELAYED,
    OPEN,
    PING,
    PING_NONCE,
    PONG,
    RELAY_HEADER,
    Channel,
    release,
)
from .context import NodeContext
from .events import ChannelClosed, ChannelData, ChannelOpened, ChannelPath, ConnectFailed
from .messages import Address
from .session import SESSION_MAGIC

Queue = Callable[[bytes, Address], None]

RESCUE_ROUNDS = 3
"""Punch rounds after the relay ended a circuit with no direct path known (as an upgrade
try punches 3 rounds)."""


class Channels:
    """The channel table of one node."""

    def __init__(self, ctx: NodeContext, queue: Queue) -> None:
        self._ctx = ctx
        self.config = ctx.config.traversal
        self._queue = queue
        self.stats = ctx.stats
        self._by_handle: dict[int, Channel] = {}
        self._wake = math.inf
        self.renew: Callable[[Channel, float], bool] | None = None
        """Asks the rendezvous for a new circuit (core/connector.py; True: asked)."""

    def __len__(self) -> int:
        return len(self._by_handle)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_handle.values()))

    def get(self, handle: int) -> Channel | None:
        return self._by_handle.get(handle)

    def new_handle(self) -> int:
        rng = self._ctx.rng
        while True:
            handle = rng.randint(1, 2**32 - 1)
            if handle not in self._by_handle:
                return handle

    def add(self, channel: Channel, now: float) -> None:
        self._by_handle[channel.handle] = channel
        self.stats["channel.created"] += 1
        self.stats[f"nat.punch.{channel.pair}.attempts"] += 1
        self.wake(channel.next_deadline())

    def wake(self, at: float) -> None:
        self._wake = min(self._wake, at)

    def timer(self) -> float:
        return self._wake

    # --- in ------------------------------------------------------------------------------

    def datagram(self, data: bytes, address: Address, now: float) -> None:
        """A channel (0x03) or relayed (0x04) datagram addressed to us."""
        via_relay = data[1] == KIND_RELAYED
        inner = data[RELAY_HEADER.size :] if via_relay else data
        if len(inner) < HEADER.size or inner[0] != SESSION_MAGIC or inner[1] != KIND_CHANNEL:
            self._drop("schema")
            return
        channel = self._by_handle.get(HEADER.unpack_from(inner)[2])
        if channel is None:
            self._drop("unknown")
            return
        if via_relay:
            circuit = RELAY_HEADER.unpack_from(data)[2]
            if (address, circuit) not in channel.relays:
                self._drop("relay")
                return
        elif not channel.may_punch and channel.relay is not None:
            self._drop("relay_only")  # relayed by choice: no direct path, not even inbound
            return
        opened = channel.open(inner, now)
        if opened is None:
            self._drop("auth")
            return
        kind, payload = opened
        if via_relay and (channel.relay, channel.circuit) != (address, circuit):
            channel.relay, channel.circuit = address, circuit  # the initiator's choice
        self.stats["channel.rx.datagrams"] += 1
        if kind == PING and len(payload) == PING_NONCE:
            self._pong(channel, payload, address, via_relay, now)
        elif kind == PONG and len(payload) == PING_NONCE:
            self._ponged(channel, payload, address, via_relay, now)
        elif kind == DATA:
            if not via_relay and channel.direct is None:
                self._adopt_direct(channel, address, now)
            elif via_relay and channel.direct is None:
                self._adopt_relay(channel, now)
            if channel.announced:
                self.stats["channel.rx.data"] += 1
                self.stats["channel.rx.bytes"] += len(payload)
                self._ctx.events.append(ChannelData(channel.handle, payload))
        elif kind == CLOSE:
            self.close(channel, "closed by peer", now, notify=False)
        else:
            self._drop("type")

    def relay_ended(self, data: bytes, address: Address, now: float) -> bool:
        """A relay's end notice for one of our circuits (True), or not ours (False)."""
        if len(data) != RELAY_HEADER.size:
            return False
        circuit = RELAY_HEADER.unpack_from(data)[2]
        for channel in self._by_handle.values():
            if (address, circuit) in channel.relays:
                channel.relays.discard((address, circuit))
                if (channel.relay, channel.circuit) == (address, circuit):
                    channel.relay, channel.circuit, channel.use_relay = None, 0, False
                    if channel.direct is None:
                        self._rescue(channel, now)
                self.stats["channel.relay.ended"] += 1
                return True
        return False

    def _rescue(self, channel: Channel, now: float) -> None:
        """The relay ended our circuit and we know no direct path. The peer may have just
        upgraded: its PING and our PONG proved the direct path to it, it released the
        circuit, and our next relayed datagram met the relay's end notice before the peer's
        first direct one reached us. So punch the peer's addresses for one punch period.
        And the circuit may have used up its time or bytes: the initiator asks the
        rendezvous for a new one (``relay_renewals`` times), the target waits for it. The
        channel closes only if neither brings a path back in time (bounded)."""
        config = self.config
        punching = channel.may_punch and bool(channel.candidates)
        renewing = channel.initiator and self.renew is not None and self.renew(channel, now)
        waiting = not channel.initiator and config.relay_renewals > 0
        if not (punching or renewing or waiting):
            self.close(channel, "the relay ended the circuit", now, notify=False)
            return
        self.stats["channel.relay.rescues"] += 1
        if punching:
            channel.punch(RESCUE_ROUNDS, now)
        window = max(config.relay_after, (RESCUE_ROUNDS + 2) * config.punch_interval)
        if renewing or waiting:
            # A CONNECT to the rendezvous, its FORWARD to the target and back, with retries.
            window += (config.connect_retries + 2) * config.connect_retry
        channel.rescue_until = now + window
        self.wake(now)

    def relayed_again(self, channel: Channel, relay: Address, circuit: int, now: float) -> None:
        """The rendezvous granted the initiator a new circuit: use it, and PING through it
        so the target takes it up too."""
        channel.relay, channel.circuit = relay, circuit
        channel.relays.add((relay, circuit))
        channel.use_relay = True
        channel.rescue_until = math.inf
        self.stats["channel.relay.renewed"] += 1
        self._send(channel, channel.ping(relay, True, self._nonce(), now), relay, now)
        self.wake(now)

    def _drop(self, reason: str) -> None:
        # Also under rx.dropped.<reason>, as every other drop: the metric of drops by reason
        # (and the rule that every dropped datagram has one) covers channel datagrams too.
        self.stats["rx.dropped"] += 1
        self.stats[f"rx.dropped.channel.{reason}"] += 1
        self.stats["channel.rx.dropped"] += 1
        self.stats[f"channel.rx.dropped.{reason}"] += 1

    def _pong(
        self, channel: Channel, nonce: bytes, address: Address, via_relay: bool, now: float
    ) -> None:
        inner = channel.seal(PONG, nonce)
        if via_relay:
            self._send(channel, RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELAYED, channel.circuit)
                       + inner, address, now)  # fmt: skip
            if channel.direct is None:
                self._adopt_relay(channel, now)
            return
        self._send(channel, inner, address, now)
        if (
            channel.direct is None
            and channel.may_punch
            and channel.candidates
            and (address not in channel.candidates and len(channel.candidates) < 8)
        ):
            # A peer-reflexive candidate (ICE): the peer's PING came from a mapping we did
            # not know (an endpoint-dependent NAT picks a new port per destination). The
            # datagram is authentic, so the peer is there: ping it back.
            channel.candidates.append(address)
            self._send(channel, channel.ping(address, False, self._nonce(), now), address, now)
            self.stats["nat.punch.reflexive"] += 1
        if channel.direct is None and not channel.candidates and not channel.initiator:
            # A public target punches nothing: its peer's PINGs find it, and its answers
            # leave from the address they reached.
            self._adopt_direct(channel, address, now)

    def _ponged(
        self, channel: Channel, nonce: bytes, address: Address, via_relay: bool, now: float
    ) -> None:
        sent = channel.pings.pop(nonce, None)
        if sent is None:
            self._drop("pong")
            return
        rtt = now - sent[0]
        channel.rtt = rtt if channel.rtt is None else 0.8 * channel.rtt + 0.2 * rtt
        if via_relay:
            if channel.direct is None:
                self._adopt_relay(channel, now)
        elif channel.direct != address:
            self._adopt_direct(channel, address, now)

    def _adopt_direct(self, channel: Channel, address: Address, now: float) -> None:
        was_relayed = channel.announced and (channel.use_relay or channel.rescue_until < math.inf)
        channel.direct = address
        channel.relay_at = math.inf
        channel.rescue_until = math.inf
        channel.punches_left = 0
        channel.upgrades_left = 0
        self.stats[f"nat.punch.{channel.pair}.direct"] += 1
        if was_relayed:
            self.stats[f"nat.punch.{channel.pair}.upgraded"] += 1
            self._ctx.events.append(ChannelPath(channel.handle, "direct", address, channel.rtt))
        self._release(channel, now)
        self._announce(channel, now)

    def _adopt_relay(self, channel: Channel, now: float) -> None:
        if channel.relay is None:
            return
        first = not channel.use_relay
        channel.use_relay = True
        channel.relay_at = math.inf
        channel.rescue_until = math.inf  # a new circuit after the old one ended
        if first and not channel.announced:
            self.stats[f"nat.punch.{channel.pair}.relayed"] += 1
            channel.upgrades_left = self.config.upgrade_tries if channel.may_punch else 0
            channel.next_upgrade = now + self.config.upgrade_interval
            self.wake(channel.next_upgrade)
        self._announce(channel, now)

    def _announce(self, channel: Channel, now: float) -> None:
        if channel.announced:
            return
        address = channel.address
        assert address is not None
        channel.announced = True
        channel.state = OPEN
        channel.deadline = math.inf
        self.stats[f"channel.opened.{channel.path}"] += 1
        self._ctx.events.append(
            ChannelOpened(
                channel.query_id, channel.handle, channel.peer_id, channel.path, address,
                channel.rtt,
            )
        )  # fmt: skip
        self.wake(now + self.config.keepalive)

    def _release(self, channel: Channel, now: float) -> None:
        if channel.circuit and channel.relay is not None:
            self._queue(release(channel.circuit), channel.relay)
            self.stats["channel.relay.released"] += 1
        channel.circuit = 0
        channel.relays.clear()
        channel.use_relay = False

    # --- out -----------------------------------------------------------------------------

    def _send(self, channel: Channel, data: bytes, address: Address, now: float) -> None:
        channel.last_tx = now
        self._queue(data, address)

    def send(self, handle: int, data: bytes, now: float) -> str | None:
        """Send application bytes; the reason when it cannot (None: sent)."""
        channel = self._by_handle.get(handle)
        if channel is None or channel.state == CLOSED:
            return "channel is closed"
        framed = channel.frame(DATA, data)
        if framed is None:
            if channel.rescue_until < math.inf:
                # Looking for the direct path after the relay ended (bounded, see _rescue):
                # the datagram is lost, as datagrams may be; the channel is not closed.
                self.stats["channel.tx.dropped.rescue"] += 1
                return None
            return "channel has no path yet"
        self.stats["channel.tx.data"] += 1
        self.stats["channel.tx.bytes"] += len(data)
        self._send(channel, framed[0], framed[1], now)
        return None

    def close(self, channel: Channel, reason: str, now: float, *, notify: bool = True) -> None:
        if self._by_handle.pop(channel.handle, None) is None:
            return
        if notify and channel.announced:
            framed = channel.frame(CLOSE, b"")
            if framed is not None:
                self._queue(*framed)
        self._release(channel, now)
        channel.state = CLOSED
        self.stats["channel.closed"] += 1
        if channel.announced:
            self._ctx.events.append(ChannelClosed(channel.handle, reason))
        elif channel.initiator:
            self.stats[f"nat.punch.{channel.pair}.failed"] += 1
            self._ctx.events.append(ConnectFailed(channel.query_id, "no_path", reason))

    # --- timers --------------------------------------------------------------------------

    def run(self, now: float) -> None:
        if now < self._wake:
            return
        wake = math.inf
        for channel in list(self._by_handle.values()):
            wake = min(wake, self._run_one(channel, now))
        self._wake = wake

    def _run_one(self, channel: Channel, now: float) -> float:
        config = self.config
        if not channel.announced and now >= channel.deadline:
            self.close(channel, "no direct or relayed path in time", now)
            return math.inf
        if channel.announced and now - channel.last_rx > config.channel_idle:
            self.close(channel, "idle", now)
            return math.inf
        if channel.direct is None and channel.relay is None and now >= channel.rescue_until:
            self.close(channel, "the relay ended the circuit", now, notify=False)
            return math.inf
        if channel.direct is None and channel.upgrades_left and now >= channel.next_upgrade:
            channel.upgrades_left -= 1
            channel.next_upgrade = now + config.upgrade_interval
            self.stats["nat.punch.upgrade_tries"] += 1
            channel.punch(3, now)
        if channel.punches_left and now >= channel.next_punch:
            channel.punches_left -= 1
            channel.next_punch = now + config.punch_interval
            for address in channel.candidates:
                self._send(channel, channel.ping(address, False, self._nonce(), now), address, now)
                self.stats["nat.punch.datagrams"] += 1
            if not channel.punches_left and channel.relay is None and not channel.announced:
                # Nothing left to try but the answers to our last punches.
                channel.deadline = min(channel.deadline, now + 2 * config.punch_interval + 0.5)
        relay = channel.relay
        if channel.direct is None and relay is not None and now >= channel.relay_at:
            # PING through the relay until a PONG proves the path (a lost PING must not
            # leave the channel without one), bounded by the connect's deadline.
            channel.relay_at = math.inf if channel.use_relay else now + config.punch_interval
            self._send(channel, channel.ping(relay, True, self._nonce(), now), relay, now)
        # A keepalive after ``keepalive`` without sending; and while nothing arrived for
        # that long, every half interval (the PONG is what proves the peer still there).
        half = config.keepalive / 2
        quiet = now - channel.last_rx >= config.keepalive
        if channel.announced and (
            now - channel.last_tx >= config.keepalive or (quiet and now - channel.last_ping >= half)
        ):
            path = channel.address
            if path is not None:
                ping = channel.ping(path, channel.direct is None, self._nonce(), now)
                self._send(channel, ping, path, now)
                channel.last_ping = now
                self.stats["channel.keepalives"] += 1
        due = channel.next_deadline()
        if channel.announced:
            due = min(
                due, channel.last_tx + config.keepalive, channel.last_rx + config.channel_idle,
                max(channel.last_rx + config.keepalive, channel.last_ping + half),
            )  # fmt: skip
        if channel.direct is None and channel.upgrades_left:
            due = min(due, channel.next_upgrade)
        return max(due, now + 1e-3)

    def _nonce(self) -> bytes:
        return self._ctx.rng.randbytes(PING_NONCE)
