"""The load generator of the single-node benchmark: runs in its own process.

It must cost the server's core nothing and cost its own core little, so it prepares its
requests ahead (distinct txids, one real :class:`~nautilus_kad.Identity`; more are made on the
fly if a phase outlasts them) and afterwards only sends bytes and matches answers by txid,
without verifying them. Every datagram is sent once: the server drops replays.

Two modes: ``signed`` requests carry an Ed25519 signature each (FIND_NODE padded to a third of
the datagram budget, as engines send first contacts); ``session`` requests go in a session
agreed with the server by a real handshake first, sealed with ChaCha20-Poly1305 (answers are
decrypted to read their txid, about a microsecond). At most ``window`` requests are outstanding
at any time; one that gets no answer within ``request_timeout`` frees its slot and counts as
lost.
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from nautilus_kad import Identity, NodeId
from nautilus_kad.core.codec import encode_message, encode_session_message
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.messages import Address, FindNode, Message, Ping
from nautilus_kad.core.session import HEADER_BYTES, SESSION_MAGIC, Session
from nautilus_kad.sim.report import percentile

# A signed response datagram starts msgpack([1, type >= 0x80, bin8 txid, ...]):
# 0x96 (array of 6) or 0x98 (of 8, with a handshake), 0x01 (version), 0xcc <type> (uint8),
# 0xc4 0x08 (bin of 8), txid.
_RESPONSE_PREFIX = b"\x01\xcc"
_TXID_HEADER = b"\xc4\x08"
MODES = ("signed", "session")


@dataclass
class PhaseResult:
    kind: str
    duration: float
    sent: int
    answered: int
    lost: int
    unmatched: int
    latency_p50_ms: float
    latency_p99_ms: float
    mean_answer_bytes: int
    mode: str = "signed"

    @property
    def rate(self) -> float:
        return self.answered / self.duration if self.duration else 0.0


def _request(kind: str, rng: random.Random) -> Message:
    if kind == "PING":
        return Ping()
    if kind == "FIND_NODE":
        return FindNode(NodeId.random(rng))
    raise ValueError(f"unknown request kind {kind!r}")


def _txid_of(data: bytes, session: Session | None) -> bytes | None:
    """The txid of an answer: read in place from a signed one (not verified), from the
    decrypted plaintext of a session one."""
    if data[:1] == bytes((SESSION_MAGIC,)):
        if session is None or len(data) < HEADER_BYTES:
            return None
        plaintext = session.open(data, int.from_bytes(data[6:HEADER_BYTES], "big"), 0.0)
        # msgpack([type >= 0x80, txid, ...]): 0x94 0xcc <type> 0xc4 0x08 <txid>
        if plaintext is None or plaintext[3:5] != _TXID_HEADER:
            return None
        return plaintext[5:13]
    if data[1:3] != _RESPONSE_PREFIX or data[4:6] != _TXID_HEADER:
        return None
    return data[6:14]


class Client:
    """A client-mode engine on the load generator's socket: it makes the requests, and for
    the session mode runs a real handshake with the server first."""

    def __init__(self, sock: socket.socket, server: Address) -> None:
        self.sock = sock
        self.server = server
        self.engine = KadEngine(
            Identity.generate(), rng=random.Random(), now=time.monotonic(), client_mode=True
        )
        self.session: Session | None = None

    def handshake(self, timeout: float = 10.0) -> Session:
        """Ping the server until it shares a session with us (the second ping offers one)."""
        engine, sock = self.engine, self.sock
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            engine.ping(self.server, time.monotonic())
            for data, address in engine.datagrams_to_send():
                sock.sendto(data, address)
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                ready, _, _ = select.select([sock], [], [], 0.05)
                if not ready:
                    continue
                try:
                    data, address = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    continue
                engine.receive_datagram(data, (address[0], address[1]), time.monotonic())
                break
            while engine.next_event() is not None:
                pass
            session = engine.sessions.for_send(self.server, None, time.monotonic())
            if session is not None:
                self.session = session
                return session
        raise RuntimeError("the server agreed no session")

    def maker(self, mode: str, kind: str, rng: random.Random) -> Callable[[], tuple[bytes, bytes]]:
        """A function that makes one more request: (txid, datagram)."""
        auth = self.engine.auth
        pad = self.engine.wire.pad_to if kind == "FIND_NODE" else 0  # as engines send them
        session = self.session

        def make() -> tuple[bytes, bytes]:
            txid = rng.randbytes(8)
            message = _request(kind, rng)
            if mode == "session":
                assert session is not None
                return txid, encode_session_message(message, txid, session, FLAG_CLIENT)
            return txid, encode_message(message, txid, auth, FLAG_CLIENT, pad_to=pad)

        return make


def blast(
    client: Client,
    kind: str,
    *,
    mode: str = "signed",
    duration: float,
    window: int,
    pool_size: int,
    warmup: float,
    request_timeout: float = 1.0,
    seed: int = 1,
) -> PhaseResult:
    """Keep ``window`` requests of one kind outstanding for ``warmup + duration`` seconds and
    count the answers that arrive during the last ``duration`` seconds."""
    sock, server = client.sock, client.server
    rng = random.Random(seed)
    session = client.handshake() if mode == "session" else None
    make = client.maker(mode, kind, rng)
    ready_made: deque[tuple[bytes, bytes]] = deque(make() for _ in range(pool_size))
    outstanding: dict[bytes, float] = {}
    order: deque[tuple[float, bytes]] = deque()  # send order, for timeouts
    latencies: list[float] = []
    sent = answered = lost = unmatched = answer_bytes = 0

    clock = time.perf_counter
    start = clock()
    measure_from = start + warmup
    end = measure_from + duration
    measuring = False
    while True:
        now = clock()
        if now >= end:
            break
        if not measuring and now >= measure_from:
            measuring = True
            sent = answered = lost = unmatched = answer_bytes = 0
            latencies.clear()
        # Expire requests that will not be answered.
        while order and now - order[0][0] > request_timeout:
            sent_at, txid = order.popleft()
            if outstanding.get(txid) == sent_at:
                del outstanding[txid]
                lost += 1
        # Fill the window (each datagram once: the server drops replays).
        while len(outstanding) < window:
            txid, data = ready_made.popleft() if ready_made else make()
            try:
                sock.sendto(data, server)
            except BlockingIOError:
                break
            sent_at = clock()
            outstanding[txid] = sent_at
            order.append((sent_at, txid))
            sent += 1
        # Collect answers.
        ready, _, _ = select.select([sock], [], [], min(0.01, max(0.0, end - now)))
        if not ready:
            continue
        for _ in range(window * 2):
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            received_at = clock()
            answer_txid = _txid_of(data, session)
            if answer_txid is None or answer_txid not in outstanding:
                unmatched += 1
                continue
            sent_at = outstanding.pop(answer_txid)
            answered += 1
            answer_bytes += len(data)
            latencies.append(received_at - sent_at)

    # Let stragglers arrive so they do not leak into the next phase.
    deadline = clock() + min(request_timeout, 0.5)
    while outstanding and clock() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.02)
        if ready:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                continue
            straggler = _txid_of(data, session)
            if straggler is not None:
                outstanding.pop(straggler, None)

    latencies.sort()
    return PhaseResult(
        kind=kind,
        duration=duration,
        sent=sent,
        answered=answered,
        lost=lost,
        unmatched=unmatched,
        latency_p50_ms=percentile(latencies, 50) * 1e3,
        latency_p99_ms=percentile(latencies, 99) * 1e3,
        mean_answer_bytes=answer_bytes // answered if answered else 0,
        mode=mode,
    )


def client_main(
    server: tuple[str, int],
    phases: list[tuple[str, str]],
    duration: float,
    window: int,
    pool_size: int,
    warmup: float,
    conn: Any,
) -> None:
    """Entry point of the load-generator process: one phase per (mode, request kind), each
    result sent back over ``conn`` as a dict (then ``None`` when done)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((server[0], 0))
        sock.setblocking(False)
        client = Client(sock, server)
        for i, (mode, kind) in enumerate(phases):
            result = blast(
                client,
                kind,
                mode=mode,
                duration=duration,
                window=window,
                pool_size=pool_size,
                warmup=warmup,
                seed=i + 1,
            )
            conn.send(asdict(result))
        conn.send(None)
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        sock.close()
        conn.close()
