"""Requests per second one node answers: per-datagram Ed25519 signatures vs sessions.

    .venv/bin/python benchmarks/sessions.py            # --quick for a short run

One server node (a real :class:`~nautilus_kad.Node` on uvloop, its routing table filled by
``--fillers`` nodes so that NODES answers carry k contacts) answers PING and FIND_NODE
requests from a load generator in a separate process. The load generator prepares its
requests before each phase (signed ones with distinct txids; session ones after a real
handshake with the server, each with its own counter), keeps ``--window`` requests in
flight and matches answers by txid (decrypting session answers). The server's cost per
request is what is measured: decode, authenticate, answer, authenticate, send.

Two figures per row: answers per wall-clock second, and answers per second of the server
process's CPU time (what one fully available core would do, whatever else runs on this
2-core machine). A phase whose numbers look disturbed can be repeated with ``--repeat``; the
best run of each row is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import select
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from nautilus_kad import Node
from nautilus_kad.aio.runner import run as run_loop
from nautilus_kad.core.codec import encode_message, encode_session_message
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import Address, FindNode, Message, Ping
from nautilus_kad.core.session import HEADER_BYTES, SESSION_MAGIC, Session

KINDS = ("PING", "FIND_NODE")
MODES = ("signed", "session")


@dataclass
class Phase:
    mode: str
    kind: str
    duration: float
    sent: int
    answered: int
    lost: int
    answer_bytes: int
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.answered / self.duration if self.duration else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.answered / self.server_cpu if self.server_cpu > 0 else 0.0


# --- the load generator (its own process) ------------------------------------------------


def _request(kind: str, rng: random.Random) -> Message:
    return Ping() if kind == "PING" else FindNode(NodeId.random(rng))


class Client:
    """A client-mode engine on a blocking socket, used to handshake, plus the blaster."""

    def __init__(self, sock: socket.socket, server: Address) -> None:
        self.sock = sock
        self.server = server
        self.engine = KadEngine(
            Identity.generate(), rng=random.Random(), now=time.monotonic(), client_mode=True
        )

    def _pump(self, until: float) -> None:
        for data, address in self.engine.datagrams_to_send():
            self.sock.sendto(data, address)
        while time.monotonic() < until:
            ready, _, _ = select.select([self.sock], [], [], 0.01)
            if ready:
                data, address = self.sock.recvfrom(2048)
                self.engine.receive_datagram(data, (address[0], address[1]), time.monotonic())
                return

    def handshake(self) -> Session:
        """Ping the server until it shares a session with us (the second ping offers)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.engine.ping(self.server, time.monotonic())
            self._pump(time.monotonic() + 0.5)
            while self.engine.next_event() is not None:
                pass
            session = self.engine.sessions.for_send(self.server, None, time.monotonic())
            if session is not None:
                return session
        raise RuntimeError("no session with the server")

    def prepare(self, mode: str, kind: str, count: int, seed: int) -> list[tuple[bytes, bytes]]:
        rng = random.Random(seed)
        auth = self.engine.auth
        if mode == "signed":
            pad = self.engine._pad_to if kind == "FIND_NODE" else 0  # as engines send them
            pool = []
            for _ in range(min(count, 4096)):
                txid = rng.randbytes(8)
                pool.append(
                    (txid, encode_message(_request(kind, rng), txid, auth, FLAG_CLIENT, pad_to=pad))
                )
            return pool
        session = self.handshake()
        out = []
        for _ in range(count):
            txid = rng.randbytes(8)
            out.append((txid, encode_session_message(_request(kind, rng), txid, session, 1)))
        return out

    @staticmethod
    def txid_of(data: bytes, session: Session | None) -> bytes | None:
        """The txid of an answer, as cheaply as possible (the generator must not be the
        bottleneck): signed answers are not verified, session answers are decrypted (a
        microsecond) and the txid read at its fixed place in the plaintext."""
        if data[0] == SESSION_MAGIC:
            if session is None or len(data) < HEADER_BYTES:
                return None
            counter = int.from_bytes(data[6:HEADER_BYTES], "big")
            plaintext = session.open(data, counter, 0.0)
            # msgpack([type >= 0x80, txid, ...]): 0x94 0xcc <type> 0xc4 0x08 <txid>
            if plaintext is None or plaintext[3:5] != b"\xc4\x08":
                return None
            return plaintext[5:13]
        # msgpack([1, type >= 0x80, txid, ...]): 0x96|0x98 0x01 0xcc <type> 0xc4 0x08 <txid>
        if data[1:3] != b"\x01\xcc" or data[4:6] != b"\xc4\x08":
            return None
        return data[6:14]

    def blast(
        self, mode: str, kind: str, *, duration: float, warmup: float, window: int, seed: int
    ) -> Phase:
        total = int((duration + warmup) * 120_000) if mode == "session" else 4096
        requests = self.prepare(mode, kind, total, seed)
        session = self.engine.sessions.for_send(self.server, None, time.monotonic())
        cyclic = mode == "signed"  # signed requests may be re-sent; session counters may not
        queue: deque[tuple[bytes, bytes]] = deque(requests)
        outstanding: dict[bytes, float] = {}
        order: deque[tuple[float, bytes]] = deque()
        sent = answered = lost = answer_bytes = 0
        clock = time.perf_counter
        start = clock()
        measure_from = start + warmup
        end = measure_from + duration
        measuring = False
        sock = self.sock
        while True:
            now = clock()
            if now >= end:
                break
            if not measuring and now >= measure_from:
                measuring = True
                sent = answered = lost = answer_bytes = 0
            while order and now - order[0][0] > 0.5:
                sent_at, txid = order.popleft()
                if outstanding.get(txid) == sent_at:
                    del outstanding[txid]
                    lost += 1
            while len(outstanding) < window and queue:
                txid, data = queue.popleft()
                if cyclic:
                    queue.append((txid, data))
                try:
                    sock.sendto(data, self.server)
                except BlockingIOError:
                    break
                sent_at = clock()
                outstanding[txid] = sent_at
                order.append((sent_at, txid))
                sent += 1
            if not queue and not outstanding:
                raise RuntimeError("ran out of prepared session requests; lower the duration")
            ready, _, _ = select.select([sock], [], [], 0.01)
            if not ready:
                continue
            for _ in range(window * 2):
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                txid = self.txid_of(data, session)
                if txid is None or outstanding.pop(txid, None) is None:
                    continue
                answered += 1
                answer_bytes += len(data)
        time.sleep(0.3)  # let stragglers arrive and be discarded
        while True:
            try:
                sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
        return Phase(mode, kind, duration, sent, answered, lost, answer_bytes)


def client_main(
    server: Address, plan: list[tuple[str, str]], options: dict[str, Any], conn: Any
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((server[0], 0))
        client = Client(sock, server)
        for i, (mode, kind) in enumerate(plan):
            sock.setblocking(True)
            if mode == "session":
                client.handshake()
            sock.setblocking(False)
            conn.send(("start", mode, kind))
            phase = client.blast(mode, kind, seed=i, **options)
            conn.send(("done", asdict(phase)))
        conn.send(None)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        sock.close()
        conn.close()


# --- the server (this process) -------------------------------------------------------------


async def measure(
    *, duration: float, warmup: float, window: int, fillers: int, repeat: int
) -> list[Phase]:
    loop = asyncio.get_running_loop()
    server = await Node.start("127.0.0.1", 0)
    others: list[Node] = []
    try:
        for _ in range(fillers):
            others.append(await Node.start("127.0.0.1", 0, [server.address]))
        plan = [(mode, kind) for _ in range(repeat) for mode in MODES for kind in KINDS]
        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        options = {"duration": duration, "warmup": warmup, "window": window}
        process = ctx.Process(
            target=client_main, args=(server.address, plan, options, sender), daemon=True
        )
        process.start()
        sender.close()
        phases: list[Phase] = []
        cpu_at_start = 0.0
        deadline = loop.time() + 120 + len(plan) * (duration + warmup + 15)
        try:
            while loop.time() < deadline:
                if not receiver.poll():
                    if not process.is_alive():
                        raise RuntimeError(f"load generator died ({process.exitcode})")
                    await asyncio.sleep(0.02)
                    continue
                message = receiver.recv()
                if message is None:
                    break
                if message[0] == "error":
                    raise RuntimeError(f"load generator failed: {message[1]}")
                if message[0] == "start":
                    await asyncio.sleep(warmup)
                    cpu_at_start = time.process_time()
                    continue
                phase = Phase(**message[1])
                phase.server_cpu = time.process_time() - cpu_at_start
                phases.append(phase)
            else:
                raise RuntimeError("load generator timed out")
        finally:
            await loop.run_in_executor(None, process.join, 5)
            if process.is_alive():
                process.terminate()
            receiver.close()
        return phases
    finally:
        for node in others:
            await node.stop()
        await server.stop()


def best(phases: list[Phase]) -> dict[tuple[str, str], Phase]:
    result: dict[tuple[str, str], Phase] = {}
    for phase in phases:
        key = (phase.mode, phase.kind)
        if key not in result or phase.rate > result[key].rate:
            result[key] = phase
    return result


def render(phases: list[Phase]) -> str:
    rows = best(phases)
    lines = [
        f"{'request':<10} {'signed/s':>10} {'session/s':>10} {'ratio':>6}   "
        f"{'signed/cpu-s':>12} {'session/cpu-s':>13} {'ratio':>6}   lost",
    ]
    for kind in KINDS:
        s, x = rows.get(("signed", kind)), rows.get(("session", kind))
        if s is None or x is None:
            continue
        ratio = x.rate / s.rate if s.rate else float("nan")
        cpu_ratio = x.per_cpu_second / s.per_cpu_second if s.per_cpu_second else float("nan")
        lines.append(
            f"{kind:<10} {s.rate:>10,.0f} {x.rate:>10,.0f} {ratio:>5.1f}x   "
            f"{s.per_cpu_second:>12,.0f} {x.per_cpu_second:>13,.0f} {cpu_ratio:>5.1f}x   "
            f"{s.lost}/{x.lost}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--fillers", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 s phases, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat, args.fillers = 1.0, 1, 10
    phases = run_loop(
        measure(
            duration=args.duration,
            warmup=args.warmup,
            window=args.window,
            fillers=args.fillers,
            repeat=args.repeat,
        )
    )
    print(
        f"one server node, load from another process, window {args.window}, "
        f"best of {args.repeat} x {args.duration:.0f} s per row"
    )
    print(render(phases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
