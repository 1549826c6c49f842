"""One channel between two peers: its keys, its path (direct or relayed) and its punches.

A channel datagram has the session datagram's shape (core/session.py) with its own kind, so
it can never be taken for a signed envelope or a DHT session datagram::

    0xC1 | 0x03 | receiver's channel id (4) | counter (8) | AEAD(type(1) ‖ payload) + tag(16)

Relayed, it travels inside ``0xC1 | 0x04 | circuit id (4)`` (the relay swaps the circuit id
for the other side's and forwards the rest untouched: it cannot read or forge it). The keys
come from the sealed offer and answer (core/introduction.py); each direction has its own key
and counter, and the receiver drops replays with a 64-counter window, as sessions do.

Inside, ``type`` is DATA (application bytes), PING / PONG (an 8-byte nonce: the punches,
keepalives and round-trip time) or CLOSE. A path is adopted only on proof that it works both
ways: a PONG answering one of our PINGs there, or the peer's DATA arriving there.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .config import MAX_DATAGRAM
from .session import REPLAY_WINDOW, SESSION_MAGIC, TAG_BYTES

if TYPE_CHECKING:
    from .ids import NodeId
    from .messages import Address

KIND_CHANNEL = 0x03
KIND_RELAYED = 0x04
KIND_RELEASE = 0x05
HEADER = struct.Struct(">BBIQ")
RELAY_HEADER = struct.Struct(">BBI")
DATA, PING, PONG, CLOSE = 0, 1, 2, 3
PING_NONCE = 8
MAX_CHANNEL_PAYLOAD = MAX_DATAGRAM - RELAY_HEADER.size - HEADER.size - 1 - TAG_BYTES
"""The largest application datagram a channel carries (1 163 bytes): it still fits one
datagram once relayed."""
_NONCE_PAD = b"\0\0\0\0"
OPENING, OPEN, CLOSED = "opening", "open", "closed"


def relayed(circuit: int, inner: bytes) -> bytes:
    return RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELAYED, circuit) + inner


def release(circuit: int) -> bytes:
    """Tells a relay to close our circuit (it checks the sender's address)."""
    return RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELEASE, circuit)


class Channel:
    """Keys, counters, path and punch schedule of one channel."""

    def __init__(
        self,
        handle: int,
        peer_id: NodeId,
        remote: int,
        send_key: bytes,
        recv_key: bytes,
        *,
        initiator: bool,
        query_id: int,
        now: float,
    ) -> None:
        self.handle = handle
        """Our channel id: the peer's datagrams carry it."""
        self.peer_id = peer_id
        self.remote = remote
        """The peer's channel id."""
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self.counter = 0
        self.highest = 0
        self.window = 0
        self.initiator = initiator
        self.query_id = query_id
        self.state = OPENING
        self.announced = False
        self.direct: Address | None = None
        self.relay: Address | None = None
        """The relay carrying our circuit, if one was granted."""
        self.circuit = 0
        self.relays: set[tuple[Address, int]] = set()
        """Every (relay, circuit) granted for this channel: a target reached through
        several rendezvous accepts the initiator's choice among them."""
        self.use_relay = False
        """Whether the relay is our path while no direct one is known."""
        self.candidates: list[Address] = []
        """Addresses we may punch (signed by the peer and checked, core/introduction.py)."""
        self.punches_left = 0
        self.next_punch = now
        self.relay_at = float("inf")
        """When to fall back to the relay if no direct path was found by then."""
        self.upgrades_left = 0
        self.may_punch = True
        """False where punching cannot work or is switched off: no upgrade tries either."""
        self.next_upgrade = float("inf")
        self.pings: dict[bytes, tuple[float, Address]] = {}
        self.rtt: float | None = None
        self.created = now
        self.last_rx = now
        self.last_tx = now
        self.last_ping = now
        self.deadline = float("inf")
        self.rescue_until = float("inf")
        """After the relay ended our circuit with no direct path known: until when we punch
        for the direct path the peer may already use before closing (see
        :meth:`Channels.relay_ended`)."""
        self.renewal: tuple[Address, NodeId | None, bytes, bytes, bytes] | None = None
        """The initiator's means to ask for a new circuit when the relay ends ours: (the
        rendezvous that granted it, its id, the offer's nonce, our ephemeral public key, the
        peer's sealed answer, which a re-dated offer must get back unchanged)."""
        self.renewals_left = 0
        self.pair = "unknown-unknown"
        """Our NAT class and the peer's (for the ``nat.punch.*`` counters)."""

    # --- crypto --------------------------------------------------------------------------

    def seal(self, kind: int, payload: bytes) -> bytes:
        self.counter += 1
        header = HEADER.pack(SESSION_MAGIC, KIND_CHANNEL, self.remote, self.counter)
        nonce = _NONCE_PAD + header[6:]
        return header + self._send.encrypt(nonce, bytes((kind,)) + payload, header)

    def open(self, data: bytes, now: float) -> tuple[int, bytes] | None:
        """(type, payload) of an authentic, fresh datagram (its counter is then marked)."""
        if len(data) < HEADER.size + 1 + TAG_BYTES:
            return None
        counter = HEADER.unpack_from(data)[3]
        if counter <= self.highest and (
            self.highest - counter >= REPLAY_WINDOW or self.window >> (self.highest - counter) & 1
        ):
            return None
        header = data[: HEADER.size]
        try:
            plain = self._recv.decrypt(_NONCE_PAD + header[6:], data[HEADER.size :], header)
        except InvalidTag:
            return None
        if counter > self.highest:
            shift = counter - self.highest
            self.window = ((self.window << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self.window |= 1 << (self.highest - counter)
        self.last_rx = now
        return plain[0], plain[1:]

    # --- path ----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return "direct" if self.direct is not None else "relayed"

    @property
    def address(self) -> Address | None:
        """Where our datagrams go now (None: no path yet)."""
        if self.direct is not None:
            return self.direct
        return self.relay if self.use_relay else None

    def frame(self, kind: int, payload: bytes) -> tuple[bytes, Address] | None:
        """One datagram on the current path, or None without one."""
        if self.direct is not None:
            return self.seal(kind, payload), self.direct
        if self.use_relay and self.relay is not None:
            return relayed(self.circuit, self.seal(kind, payload)), self.relay
        return None

    def ping(self, address: Address, via_relay: bool, nonce: bytes, now: float) -> bytes:
        """A PING (a punch, a keepalive) to ``address`` or through the relay."""
        self.pings[nonce] = (now, address)
        if len(self.pings) > 64:
            del self.pings[next(iter(self.pings))]
        inner = self.seal(PING, nonce)
        return relayed(self.circuit, inner) if via_relay else inner

    def punch(self, rounds: int, now: float) -> None:
        """Start (or restart) punching: ``rounds`` rounds from now."""
        if self.candidates and rounds:
            self.punches_left = rounds
            self.next_punch = now

    def next_deadline(self) -> float:
        due = min(self.deadline, self.relay_at, self.rescue_until)
        if self.punches_left:
            due = min(due, self.next_punch)
        return due
