"""Abuse resistance on real UDP sockets (loopback only).

Three sources on three loopback addresses (Linux routes all of 127/8 to ``lo``): a victim node
on 127.0.0.1, an honest client node on 127.0.0.3 and an attacker's plain socket on 127.0.0.2.
The victim polices loopback sources here (``rate_limit_local``); by default it would not, since
a loopback test network puts every node behind one address.

* a flood of valid-looking signed requests from one source is throttled, then ignored, while
  the honest node's gets through the victim are all served;
* STOREs carrying a token issued to another address (what a spoofed source has) or a made-up
  token are refused with BAD_TOKEN and counted, and nothing is stored;
* malformed datagrams of every kind get no reply at all (and are counted).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest
from netutil import LoopRunner, describe_loop_errors, drain, raw_udp_socket, wait_for_anything

from nautilus_kad import Identity, KadConfig, Node, NodeId, Record
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM
from nautilus_kad.core.engine import FLAG_CLIENT
from nautilus_kad.core.messages import (
    Error,
    ErrorCode,
    FindNode,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
)
from nautilus_kad.core.session import HEADER, SESSION_MAGIC

pytestmark = pytest.mark.integration

VICTIM_HOST, ATTACKER_HOST, HONEST_HOST = "127.0.0.1", "127.0.0.2", "127.0.0.3"
RATE, BURST = 50.0, 100
FLOOD = 3000


def _bindable(host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError:
            return False
    return True


needs_loopback_aliases = pytest.mark.skipif(
    not (_bindable(ATTACKER_HOST) and _bindable(HONEST_HOST)),
    reason="127.0.0.2 and 127.0.0.3 are not bindable here",
)


class Attacker:
    """A plain UDP socket speaking the wire format by hand, with its own key."""

    def __init__(self, sock: socket.socket, seed: int) -> None:
        self.sock = sock
        self.auth = Authenticator(Identity.generate(random.Random(seed)))
        self.rng = random.Random(seed)

    def request(self, message: Message) -> tuple[bytes, bytes]:
        txid = self.rng.randbytes(8)
        return txid, encode_message(message, txid, self.auth, FLAG_CLIENT)

    async def ask(self, message: Message, to: tuple[str, int]) -> Message:
        """Send one request and wait (bounded) for the answer with its txid."""
        txid, data = self.request(message)
        self.sock.sendto(data, to)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while loop.time() < deadline:
            for data, _ in drain(self.sock):
                envelope = decode_datagram(data, self.auth)
                if envelope.txid == txid:
                    return envelope.message
            await asyncio.sleep(0.005)
        raise AssertionError(f"no answer to {message!r}")


def _run(coro: object, timeout: float = 60) -> None:
    with LoopRunner() as runner:
        runner.run(coro, timeout=timeout)  # type: ignore[arg-type]
        assert not runner.loop_errors, describe_loop_errors(runner.loop_errors)


@needs_loopback_aliases
def test_a_flooding_source_is_throttled_while_honest_gets_are_served() -> None:
    async def scenario() -> None:
        policing = KadConfig(rate_limit_local=True, rate_limit=RATE, rate_burst=BURST)
        async with (
            await Node.start(VICTIM_HOST, 0, config=policing) as victim,
            await Node.start(HONEST_HOST, 0, [victim.address], client_mode=True) as honest,
        ):
            values = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(10)}
            for key, value in values.items():
                await honest.put(key, value)
            assert len(victim.engine.store) == len(values)  # the client keeps none itself

            with raw_udp_socket(ATTACKER_HOST) as sock:
                attacker = Attacker(sock, 1)
                rng = random.Random(2)
                flood_done = asyncio.Event()
                served = 0

                async def honest_gets() -> None:
                    nonlocal served
                    keys = list(values)
                    while not flood_done.is_set():
                        key = keys[served % len(keys)]
                        assert await honest.get(key) == values[key]
                        served += 1
                        await asyncio.sleep(0.02)

                task = asyncio.create_task(honest_gets())
                replies = 0
                start = time.monotonic()
                for i in range(FLOOD):
                    message = Ping() if i % 2 else FindNode(NodeId.random(rng))
                    sock.sendto(attacker.request(message)[1], victim.address)
                    if i % 50 == 49:
                        replies += len(drain(sock))
                        await asyncio.sleep(0.002)
                elapsed = time.monotonic() - start
                flood_done.set()
                await asyncio.wait_for(task, 30)
                replies += len(await wait_for_anything(sock, 0.3))

                stats = victim.stats
                limited = stats.get("rx.dropped.rate_limited", 0)
                blocked = stats.get("rx.dropped.blocked", 0)
                summary = (
                    f"{replies} replies to {FLOOD} in {elapsed:.2f}s, {limited} rate-limited, "
                    f"{blocked} ignored, {served} honest gets"
                )
                print(summary)  # shown with -s
                # Throttled: at most the burst plus what the rate refilled (ignored after).
                assert replies <= BURST + RATE * elapsed + 10, summary
                assert limited >= BURST, summary
                assert blocked > 0, summary
                assert stats["ratelimit.blocked_now"] == 1, summary
                # The honest peer was served throughout, and is not limited.
                assert served >= 5, summary
                # Still ignored after the flood; the honest node still gets answers.
                sock.sendto(attacker.request(Ping())[1], victim.address)
                assert not await wait_for_anything(sock, 0.2)
                assert (await honest.ping(victim.address)).contact.node_id == victim.node_id

    _run(scenario())


@needs_loopback_aliases
def test_stores_with_a_token_for_another_address_are_refused() -> None:
    async def scenario() -> None:
        async with await Node.start(VICTIM_HOST, 0) as victim:
            with raw_udp_socket(ATTACKER_HOST) as own, raw_udp_socket(HONEST_HOST) as spoofed:
                holder = Attacker(own, 3)
                forger = Attacker(spoofed, 3)  # the same key, another source address
                answer = await holder.ask(FindNode(NodeId(1)), victim.address)
                assert isinstance(answer, Nodes) and len(answer.token) == 8
                token = answer.token
                now_ms = int(time.time() * 1000)
                forged = Record(NodeId(11), b"forged", now_ms, 600)
                made_up = Record(NodeId(12), b"made up", now_ms, 600)
                for record, use in ((forged, token), (made_up, b"\x00" * 8), (made_up, b"")):
                    refusal = await forger.ask(Store(record, use), victim.address)
                    assert isinstance(refusal, Error), refusal
                    assert refusal.code is ErrorCode.BAD_TOKEN
                assert victim.stats["store.rejected.token"] == 3
                assert len(victim.engine.store) == 0
                # The token is good at the address it was issued to.
                genuine = Record(NodeId(13), b"genuine", now_ms, 600)
                assert isinstance(await holder.ask(Store(genuine, token), victim.address), Stored)
                assert len(victim.engine.store) == 1

    _run(scenario())


def _malformed(attacker: Attacker, rng: random.Random) -> list[bytes]:
    _, valid = attacker.request(FindNode(NodeId(5)))
    bad_signature = bytearray(valid)
    bad_signature[-1] ^= 1
    bad_payload = bytearray(valid)
    bad_payload[20] ^= 0x40
    unsolicited = encode_message(Pong(("127.0.0.1", 1)), rng.randbytes(8), attacker.auth)
    return [
        b"",
        b"\x00",
        rng.randbytes(100),
        rng.randbytes(MAX_DATAGRAM),
        b"\x96" * (MAX_DATAGRAM + 1),
        rng.randbytes(5000),
        valid[: len(valid) // 2],
        valid + b"\x00",
        bytes(bad_signature),
        bytes(bad_payload),
        unsolicited,
        HEADER.pack(SESSION_MAGIC, 0x07, 1, 1) + rng.randbytes(40),  # unknown kind
        HEADER.pack(SESSION_MAGIC, 0x02, 1, 1) + b"x",  # a notice of the wrong size
        bytes([SESSION_MAGIC]) + b"\x01\x00",  # a truncated session header
    ]


def test_malformed_datagrams_get_no_reply() -> None:
    async def scenario() -> None:
        async with await Node.start(VICTIM_HOST, 0) as victim:
            with raw_udp_socket(VICTIM_HOST) as sock:
                attacker = Attacker(sock, 4)
                rng = random.Random(5)
                corpus = _malformed(attacker, rng)
                for _ in range(20):
                    for data in corpus:
                        sock.sendto(data, victim.address)
                    await asyncio.sleep(0.005)
                replies = await wait_for_anything(sock, 0.5)
                assert replies == []
                stats = victim.stats
                assert stats["rx.dropped"] >= 0.9 * 20 * len(corpus)
                assert stats.get("engine.errors", 0) == 0
                # The same socket does get answers to a valid request: the silence was chosen.
                assert isinstance(await attacker.ask(Ping(), victim.address), Pong)

    _run(scenario())
