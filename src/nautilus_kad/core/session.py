"""Per-peer sessions: X25519 agreement once, then one AEAD per datagram.

Signing every datagram with Ed25519 costs tens of microseconds on each side, which caps a node
at a few thousand requests per second. Two nodes that talk repeatedly instead agree on session
keys during one signed exchange (the handshake, modelled on discv5 and Noise) and then
authenticate each datagram with ChaCha20-Poly1305 (about a microsecond):

1. The initiator adds ``[ephemeral X25519 public key, its session id, the responder's
   address]`` to a signed request (an *offer*).
2. The responder verifies the request's signature (which covers the offer), draws its own
   ephemeral key and session id, answers with a signed response carrying them (an *accept*)
   and derives the keys.
3. The initiator derives the same keys from the accept. Keys come from HKDF-SHA256 over the
   X25519 secret, bound to both node ids, both ephemeral keys, both session ids and both
   addresses, so a session is useless to anyone else and from anywhere else.

Session datagram (14-byte header, authenticated as associated data)::

    0xC1 | 0x01 | receiver's session id (4) | counter (8, big-endian) | AEAD(msgpack([type,
    txid, flags, body])) with its 16-byte tag

``0xC1`` is the one byte msgpack never uses, so a session datagram can never be mistaken for a
signed envelope. Each direction has its own key and counter (the AEAD nonce is the counter);
the receiver keeps a 64-counter sliding window and drops replays. A datagram for a session the
receiver does not know (it restarted, or the session expired) gets a 14-byte *unknown-session*
notice ``0xC1 | 0x02 | session id | counter``, never larger than what arrived; the sender then
drops its session and retries once with a fresh signed handshake. The notice is unauthenticated,
but it must echo the session id and counter of a request still waiting for its answer, and all
it can cause is that handshake.

Sessions expire after an idle timeout and a maximum lifetime; the table is bounded, and
sessions the initiator never used (half-open: possibly from a spoofed source) go first when it
is full. The table that holds them, and runs both halves of the handshake, is
:mod:`.session_table`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from .ids import NodeId
    from .messages import Address

SESSION_MAGIC = 0xC1
"""First byte of every session datagram: the byte msgpack never uses."""
KIND_DATA = 0x01
KIND_UNKNOWN_SESSION = 0x02
HEADER = struct.Struct(">BBIQ")
HEADER_BYTES = HEADER.size
TAG_BYTES = 16
SID_BYTES = 4
EPHEMERAL_KEY_BYTES = 32
MIN_DATA_DATAGRAM = HEADER_BYTES + 1 + TAG_BYTES
"""The smallest well-formed session data datagram (a notice answers nothing smaller)."""
REPLAY_WINDOW = 64
HKDF_SALT = b"nautilus-kad/session/v1"
_NONCE_PAD = b"\0\0\0\0"


@lru_cache(maxsize=4096)
def _pack_address(address: Address) -> bytes:
    packed = ipaddress.ip_address(address[0]).packed
    return bytes((len(packed),)) + packed + address[1].to_bytes(2, "big")


def derive_keys(
    shared: bytes,
    initiator_id: NodeId,
    responder_id: NodeId,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    initiator_sid: int,
    responder_sid: int,
    initiator_address: Address,
    responder_address: Address,
) -> tuple[bytes, bytes]:
    """The (initiator → responder, responder → initiator) keys of a session."""
    info = b"".join(
        (
            initiator_id.to_bytes32(),
            responder_id.to_bytes32(),
            initiator_ephemeral,
            responder_ephemeral,
            initiator_sid.to_bytes(SID_BYTES, "big"),
            responder_sid.to_bytes(SID_BYTES, "big"),
            _pack_address(initiator_address),
            _pack_address(responder_address),
        )
    )
    okm = HKDF(hashes.SHA256(), 64, HKDF_SALT, info).derive(shared)
    return okm[:32], okm[32:]


# --- handshake fields (carried in the signed envelope) ---------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeOffer:
    """In a signed request: the initiator's ephemeral key and session id, and the address it
    sent the request to (the responder's address as the initiator sees it)."""

    ephemeral: bytes
    sid: int
    to: Address


@dataclass(frozen=True, slots=True)
class HandshakeAccept:
    """In a signed response: the responder's ephemeral key and session id."""

    ephemeral: bytes
    sid: int


Handshake = HandshakeOffer | HandshakeAccept


# --- one session -------------------------------------------------------------------------------


class CipherPool:
    """Bounds the live AEAD contexts of one node's sessions.

    A ``ChaCha20Poly1305`` object holds about 2.3 KiB of OpenSSL state, native memory that
    Python's own accounting does not see; a node with a session per peer it talked to carried
    tens of them (38 per node, 87 KiB, in a 200-node loopback network). Contexts are made on
    first use and the pool keeps the ``capacity`` most recently made ones: making one more
    drops the oldest (first in, first out, so a datagram on a live context costs nothing
    extra). A session whose context was dropped makes it again on its next datagram (about
    1.5 µs), from the key it keeps.
    """

    __slots__ = ("_live", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._live: list[tuple[Session, bool, ChaCha20Poly1305]] = []
        """Oldest first (a few entries: a list, not a deque and its 760-byte block)."""

    def __len__(self) -> int:
        return len(self._live)

    def make(self, session: Session, sending: bool) -> ChaCha20Poly1305:
        """A context for ``session`` (its sending or receiving key), remembered as the newest."""
        cipher = ChaCha20Poly1305(session._send_key if sending else session._recv_key)
        live = self._live
        live.append((session, sending, cipher))
        if len(live) > self.capacity:
            old, old_sending, old_cipher = live.pop(0)
            if old_sending:
                if old._send is old_cipher:
                    old._send = None
            elif old._recv is old_cipher:
                old._recv = None
        return cipher


class Session:
    """Keys, counters and replay state shared with one peer at one address."""

    __slots__ = (
        "_ciphers",
        "_recv",
        "_recv_key",
        "_send",
        "_send_key",
        "address",
        "confirmed",
        "created",
        "highest",
        "last_rx",
        "local_sid",
        "peer_id",
        "peer_key",
        "remote_sid",
        "send_counter",
        "window",
    )

    def __init__(
        self,
        *,
        peer_id: NodeId,
        peer_key: bytes,
        address: Address,
        local_sid: int,
        remote_sid: int,
        send_key: bytes,
        recv_key: bytes,
        now: float,
        confirmed: bool,
        ciphers: CipherPool | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.peer_key = peer_key
        self.address = address
        self.local_sid = local_sid
        self.remote_sid = remote_sid
        # The ciphers (a few KiB of OpenSSL state each) are made on first use: many sessions
        # are never used, or only in one direction. A pool bounds how many stay live.
        self._ciphers = ciphers
        self._send_key = send_key
        self._recv_key = recv_key
        self._send: ChaCha20Poly1305 | None = None
        self._recv: ChaCha20Poly1305 | None = None
        self.send_counter = 0
        self.highest = 0
        """Highest counter received (0: none yet; counters start at 1)."""
        self.window = 0
        """Bit i set: counter ``highest - i`` was received."""
        self.created = now
        self.last_rx = now
        self.confirmed = confirmed
        """The peer proved it holds the keys (a datagram arrived in the session)."""

    def seal(self, plaintext: bytes) -> bytes:
        """One session datagram carrying ``plaintext`` (the next counter)."""
        self.send_counter += 1
        header = HEADER.pack(SESSION_MAGIC, KIND_DATA, self.remote_sid, self.send_counter)
        cipher = self._send
        if cipher is None:
            pool = self._ciphers
            cipher = self._send = (
                ChaCha20Poly1305(self._send_key) if pool is None else pool.make(self, True)
            )
        return header + cipher.encrypt(_NONCE_PAD + header[6:], plaintext, header)

    def replayed(self, counter: int) -> bool:
        """Whether ``counter`` is too old or was already received (cheap: before the AEAD)."""
        if counter > self.highest:
            return False
        offset = self.highest - counter
        return offset >= REPLAY_WINDOW or bool(self.window >> offset & 1)

    def open(self, data: bytes, counter: int, now: float) -> bytes | None:
        """The plaintext of an authentic, fresh datagram (and mark its counter), else None."""
        header = data[:HEADER_BYTES]
        cipher = self._recv
        if cipher is None:
            pool = self._ciphers
            cipher = self._recv = (
                ChaCha20Poly1305(self._recv_key) if pool is None else pool.make(self, False)
            )
        try:
            plaintext = cipher.decrypt(_NONCE_PAD + header[6:], data[HEADER_BYTES:], header)
        except InvalidTag:
            return None
        if counter > self.highest:
            shift = counter - self.highest
            self.window = ((self.window << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self.window |= 1 << (self.highest - counter)
        self.last_rx = now
        self.confirmed = True
        return plaintext

    def __repr__(self) -> str:
        host, port = self.address
        return f"Session({self.peer_id.short()}… at {host}:{port}, sid {self.local_sid:08x})"


def unknown_session_notice(sid: int, counter: int) -> bytes:
    """The 14-byte answer to a datagram for a session we do not hold."""
    return HEADER.pack(SESSION_MAGIC, KIND_UNKNOWN_SESSION, sid, counter)
