"""The load generator of the single-node benchmark: runs in its own process.

It must cost the server's core nothing and cost its own core little, so it signs a pool of
requests up front (distinct txids, one real :class:`~nautilus_kad.Identity`) and afterwards
only sends bytes and matches answers by txid, without decoding or verifying them. At most
``window`` requests are outstanding at any time; one that gets no answer within
``request_timeout`` frees its slot and counts as lost.
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from nautilus_kad import Identity, NodeId
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import encode_message
from nautilus_kad.core.engine import FLAG_CLIENT
from nautilus_kad.core.messages import FindNode, Message, Ping

# A response datagram starts msgpack([1, type >= 0x80, bin8 txid, ...]):
# 0x96 (array of 6), 0x01 (version), 0xcc <type> (uint8), 0xc4 0x08 (bin of 8), txid.
_RESPONSE_PREFIX = b"\x96\x01\xcc"
_TXID_HEADER = b"\xc4\x08"


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

    @property
    def rate(self) -> float:
        return self.answered / self.duration if self.duration else 0.0


def _request(kind: str, rng: random.Random) -> Message:
    if kind == "PING":
        return Ping()
    if kind == "FIND_NODE":
        return FindNode(NodeId.random(rng))
    raise ValueError(f"unknown request kind {kind!r}")


def _txid_of(data: bytes) -> bytes | None:
    if data[:3] != _RESPONSE_PREFIX or data[4:6] != _TXID_HEADER:
        return None
    return data[6:14]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


def blast(
    sock: socket.socket,
    server: tuple[str, int],
    kind: str,
    *,
    duration: float,
    window: int,
    pool_size: int,
    warmup: float,
    request_timeout: float = 1.0,
    seed: int = 1,
) -> PhaseResult:
    """Keep ``window`` requests of one kind outstanding for ``warmup + duration`` seconds and
    count the answers that arrive during the last ``duration`` seconds."""
    rng = random.Random(seed)
    auth = Authenticator(Identity.generate())
    txids: set[bytes] = set()
    while len(txids) < pool_size:
        txids.add(rng.randbytes(8))
    pool = {txid: encode_message(_request(kind, rng), txid, auth, FLAG_CLIENT) for txid in txids}
    free: deque[bytes] = deque(pool)
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
                free.append(txid)
                lost += 1
        # Fill the window.
        while len(outstanding) < window and free:
            txid = free.popleft()
            try:
                sock.sendto(pool[txid], server)
            except BlockingIOError:
                free.appendleft(txid)
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
            answer_txid = _txid_of(data)
            if answer_txid is None or answer_txid not in outstanding:
                unmatched += 1
                continue
            sent_at = outstanding.pop(answer_txid)
            free.append(answer_txid)
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
            straggler = _txid_of(data)
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
        latency_p50_ms=_percentile(latencies, 0.5) * 1e3,
        latency_p99_ms=_percentile(latencies, 0.99) * 1e3,
        mean_answer_bytes=answer_bytes // answered if answered else 0,
    )


def client_main(
    server: tuple[str, int],
    kinds: list[str],
    duration: float,
    window: int,
    pool_size: int,
    warmup: float,
    conn: Any,
) -> None:
    """Entry point of the load-generator process: one phase per request kind, each result
    sent back over ``conn`` as a dict (then ``None`` when done)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((server[0], 0))
        sock.setblocking(False)
        for i, kind in enumerate(kinds):
            result = blast(
                sock,
                server,
                kind,
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
