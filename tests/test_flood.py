"""A node under a flood of 10 000 bad datagrams keeps serving honest traffic.

One victim in a 10-node loopback network; a plain non-blocking UDP socket in the same event
loop sends it random bytes, mutated copies of real signed datagrams, valid but unsolicited
responses and oversized datagrams. Meanwhile honest gets through the victim must all succeed.
Afterwards the victim still answers, counted (nearly) every bad datagram under
``rx.dropped.*``, answered none of them, and nothing raised inside the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import pytest
from netutil import (
    LoopRunner,
    describe_loop_errors,
    drain,
    dropped_total,
    holds,
    raw_udp_socket,
    start_network,
    stop_all,
    wait_for_anything,
)

from nautilus_kad import Contact, Identity, KadConfig, Node, NodeId, Record
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import PROTOCOL_VERSION, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM
from nautilus_kad.core.messages import (
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
)

pytestmark = pytest.mark.integration

FLOOD_SIZE = 10_000
NETWORK_SIZE = 10
K = 3
"""A small k, so most records live elsewhere and the victim's gets must use the network."""
MIN_HONEST_GETS = 20
WINDOW = 200
"""Datagrams the flood keeps ahead of what the victim has read (well inside its socket
buffer, so the kernel drops almost nothing and the drop counters can be checked)."""


# --- the flood corpus ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    kind: str
    data: bytes


def _random_contacts(rng: random.Random, n: int) -> tuple[Contact, ...]:
    return tuple(
        Contact(NodeId.random(rng), f"127.0.0.{rng.randrange(1, 255)}", rng.randrange(1, 65536))
        for _ in range(n)
    )


def _record(rng: random.Random, size: int = 100) -> Record:
    return Record(NodeId.random(rng), rng.randbytes(size), int(time.time() * 1000), 3600)


def _valid_messages(rng: random.Random, observed: tuple[str, int]) -> list[Message]:
    token = rng.randbytes(8)
    return [
        Ping(),
        FindNode(NodeId.random(rng)),
        FindValue(NodeId.random(rng)),
        Store(_record(rng, rng.randrange(0, 1000)), token),
        Pong(observed),
        Nodes(observed, token, _random_contacts(rng, 20)),
        Nodes(observed, token, ()),
        Value(observed, token, _record(rng, rng.randrange(0, 1000))),
        Stored(observed),
        Error(observed, ErrorCode.BAD_TOKEN, "nope"),
    ]


def _unsolicited(rng: random.Random, observed: tuple[str, int]) -> list[Message]:
    token = rng.randbytes(8)
    return [
        Pong(observed),
        Nodes(observed, token, _random_contacts(rng, rng.randrange(0, 21))),
        Value(observed, token, _record(rng, rng.randrange(0, 900))),
        Stored(observed),
        Error(observed, ErrorCode.STALE_RECORD, "stale"),
    ]


def _mutate(rng: random.Random, data: bytes, other_signature: bytes) -> bytes:
    """A copy of a valid datagram that is no longer valid (always differs from ``data``)."""
    how = rng.randrange(6)
    buf = bytearray(data)
    if how == 0:  # flip a few bytes anywhere
        for pos in rng.sample(range(len(buf)), min(len(buf), rng.randrange(1, 5))):
            buf[pos] ^= rng.randrange(1, 256)
    elif how == 1:  # flip one bit of the signed payload
        pos = rng.randrange(len(buf) - 64)
        buf[pos] ^= 1 << rng.randrange(8)
    elif how == 2:  # truncate
        del buf[rng.randrange(len(buf)) :]
    elif how == 3:  # extend
        buf += rng.randbytes(rng.randrange(1, 100))
    elif how == 4:  # a genuine signature, of other bytes
        buf[-64:] = other_signature
    else:  # flip one bit of the signature
        pos = len(buf) - 1 - rng.randrange(64)
        buf[pos] ^= 1 << rng.randrange(8)
    assert bytes(buf) != data
    return bytes(buf)


def _oversized_signed(rng: random.Random, identity: Identity) -> bytes:
    """A well-formed, correctly signed datagram that is simply too big."""
    size = rng.randrange(MAX_DATAGRAM + 1, 8000)
    record = [0, NodeId.random(rng).to_bytes32(), b"", int(time.time() * 1000), 60]
    payload = msgpack.packb(
        [PROTOCOL_VERSION, 0x04, rng.randbytes(8), identity.public_key, 0, [record, b"t" * 8]],
        use_bin_type=True,
    )
    pad = size - len(payload) - 64
    record[2] = rng.randbytes(max(0, pad - 3))  # bin16 header is 3 bytes
    payload = msgpack.packb(
        [PROTOCOL_VERSION, 0x04, rng.randbytes(8), identity.public_key, 0, [record, b"t" * 8]],
        use_bin_type=True,
    )
    return bytes(payload) + identity.sign(payload)


def build_flood(rng: random.Random, observed: tuple[str, int]) -> list[Bad]:
    identity = Identity.generate(rng)
    auth = Authenticator(identity)
    bases = [
        encode_message(m, rng.randbytes(8), auth)
        for _ in range(20)
        for m in _valid_messages(rng, observed)
    ]
    flood: list[Bad] = []
    for i in range(FLOOD_SIZE):
        roll = i % 10
        if roll < 3:
            flood.append(Bad("random", rng.randbytes(rng.randrange(0, 1501))))
        elif roll < 7:
            base, other = rng.sample(bases, 2)
            flood.append(Bad("mutated", _mutate(rng, base, other[-64:])))
        elif roll < 9:
            message = rng.choice(_unsolicited(rng, observed))
            flood.append(Bad("unsolicited", encode_message(message, rng.randbytes(8), auth)))
        elif i % 20 == 9:
            flood.append(Bad("oversize", _oversized_signed(rng, identity)))
        else:
            flood.append(Bad("oversize", rng.randbytes(rng.randrange(MAX_DATAGRAM + 1, 9000))))
    # A couple of edge sizes.
    flood[0] = Bad("random", b"")
    flood[1] = Bad("oversize", b"\x96" * (MAX_DATAGRAM + 1))
    rng.shuffle(flood)
    return flood


# --- the scenario -------------------------------------------------------------------------


@dataclass
class FloodOutcome:
    sent: Counter[str]
    dropped: int
    dropped_reasons: Counter[str]
    total_dropped_counter: int
    honest_gets_during_flood: int
    honest_pings_during_flood: int
    replies_to_flooder: int
    engine_errors: int
    flooder_in_table: bool
    victim_pending_after: int
    flood_seconds: float


async def _settle(node: Node, quiet: float = 0.1, limit: float = 5.0) -> None:
    """Wait (bounded) until the victim has read everything queued on its socket."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last = node.engine.stats["rx.datagrams"]
    quiet_since = loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.01)
        now_count = node.engine.stats["rx.datagrams"]
        if now_count != last:
            last, quiet_since = now_count, loop.time()
        elif loop.time() - quiet_since >= quiet:
            return


async def flood_scenario(seed: int) -> FloodOutcome:
    rng = random.Random(seed)
    config = KadConfig(k=K)
    nodes = await start_network(NETWORK_SIZE, config=config)
    try:
        victim = nodes[NETWORK_SIZE // 2]
        others = [n for n in nodes if n is not victim]

        # Honest data the victim does not hold: its gets must go out and come back.
        values: dict[bytes, bytes] = {}
        for i in range(200):
            key = f"flood-key-{i}".encode()
            result = await rng.choice(others).put(key, f"value-{i}".encode())
            if all(c.node_id != victim.node_id for c in result.stored_on):
                values[key] = f"value-{i}".encode()
            if len(values) >= 40:
                break
        assert len(values) >= MIN_HONEST_GETS
        assert not any(holds(victim, k) for k in values)

        with raw_udp_socket() as flooder:
            flooder_address = flooder.getsockname()[:2]
            corpus = build_flood(rng, flooder_address)
            await _settle(victim)
            before = dict(victim.engine.stats)
            flood_done = asyncio.Event()
            honest = {"gets": 0, "pings": 0}
            replies: list[tuple[bytes, object]] = []

            async def honest_traffic() -> None:
                keys = list(values)
                i = 0
                while not flood_done.is_set():
                    key = keys[i % len(keys)]
                    got = await victim.get(key)
                    assert got == values[key], f"honest get of {key!r} returned {got!r}"
                    if not flood_done.is_set():
                        honest["gets"] += 1
                    pong = await others[i % len(others)].ping(victim.address)
                    assert pong.contact.node_id == victim.node_id
                    if not flood_done.is_set():
                        honest["pings"] += 1
                    i += 1
                    await asyncio.sleep(0.002)

            async def flood() -> float:
                loop = asyncio.get_running_loop()
                start = loop.time()
                rx0 = victim.engine.stats["rx.datagrams"]
                checkpoint = len(corpus) // (MIN_HONEST_GETS + 5)
                for i, bad in enumerate(corpus):
                    # Let the honest task keep pace: at least one get per checkpoint.
                    if i and i % checkpoint == 0:
                        need = i // checkpoint
                        wait_until = loop.time() + 5.0
                        while honest["gets"] < need and loop.time() < wait_until:
                            await asyncio.sleep(0.001)
                    # Stay at most WINDOW datagrams ahead of the victim (bounded stall).
                    stall_until = loop.time() + 0.5
                    while (
                        i - (victim.engine.stats["rx.datagrams"] - rx0) > WINDOW
                        and loop.time() < stall_until
                    ):
                        await asyncio.sleep(0)
                    for _ in range(100):
                        try:
                            flooder.sendto(bad.data, victim.address)
                            break
                        except BlockingIOError:
                            await asyncio.sleep(0)
                    if i % 256 == 0:
                        replies.extend(drain(flooder))
                        await asyncio.sleep(0)
                elapsed = loop.time() - start
                flood_done.set()
                return elapsed

            honest_task = asyncio.create_task(honest_traffic())
            try:
                flood_seconds = await asyncio.wait_for(flood(), 60)
            finally:
                flood_done.set()
            await asyncio.wait_for(honest_task, 30)

            await _settle(victim)
            replies.extend(await wait_for_anything(flooder, 0.5))

            # The victim still answers, from every direction.
            for other in others[:3]:
                assert (await other.ping(victim.address)).contact.node_id == victim.node_id
            assert await victim.get(next(iter(values))) == next(iter(values.values()))

        after = dict(victim.engine.stats)
        reasons = Counter(
            {
                key.removeprefix("rx.dropped."): after.get(key, 0) - before.get(key, 0)
                for key in after
                if key.startswith("rx.dropped.")
            }
        )
        return FloodOutcome(
            sent=Counter(b.kind for b in corpus),
            dropped=dropped_total(after) - dropped_total(before),
            dropped_reasons=+reasons,
            total_dropped_counter=after.get("rx.dropped", 0) - before.get("rx.dropped", 0),
            honest_gets_during_flood=honest["gets"],
            honest_pings_during_flood=honest["pings"],
            replies_to_flooder=len(replies),
            engine_errors=after.get("engine.errors", 0),
            flooder_in_table=any(c.address == flooder_address for c in victim.routing_table),
            victim_pending_after=victim.engine.pending_requests,
            flood_seconds=flood_seconds,
        )
    finally:
        await stop_all(nodes)


def _loop_factories() -> list[object]:
    params: list[object] = [pytest.param(None, id="asyncio")]
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return params
    params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


@pytest.mark.parametrize("loop_factory", _loop_factories())
def test_flood_of_bad_datagrams(
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with LoopRunner(loop_factory=loop_factory) as runner:
        outcome = runner.run(flood_scenario(seed=7), timeout=120)
        loop_errors = list(runner.loop_errors)

    total = sum(outcome.sent.values())
    assert total == FLOOD_SIZE
    summary = (
        f"sent {dict(outcome.sent)}, dropped {outcome.dropped} "
        f"{dict(outcome.dropped_reasons)} in {outcome.flood_seconds:.2f}s"
    )
    # Counted: every kind of bad datagram lands under rx.dropped.<reason>; UDP may lose a few.
    # The upper bound catches counting a datagram twice (that would be ~2x); its slack is for
    # the honest traffic running beside the flood: on a loaded machine a few answers arrive
    # after their request gave up and are dropped as unsolicited too (CI saw 10 006).
    assert outcome.dropped >= 0.9 * FLOOD_SIZE, summary
    assert outcome.dropped <= FLOOD_SIZE + FLOOD_SIZE // 100, summary
    assert outcome.total_dropped_counter == outcome.dropped, summary
    reasons = outcome.dropped_reasons
    assert reasons["unsolicited"] >= 0.9 * outcome.sent["unsolicited"], summary
    assert reasons["oversize"] >= 0.9 * outcome.sent["oversize"], summary
    assert reasons["signature"] > 0, summary
    assert reasons["msgpack"] + reasons["schema"] + reasons["undersize"] > 0, summary
    # Never answered, never crashed, never trusted.
    assert outcome.replies_to_flooder == 0, summary
    assert outcome.engine_errors == 0, summary
    assert not outcome.flooder_in_table
    # Honest traffic was served throughout.
    assert outcome.honest_gets_during_flood >= MIN_HONEST_GETS, summary
    assert outcome.honest_pings_during_flood >= MIN_HONEST_GETS, summary
    assert outcome.victim_pending_after <= 10
    assert not loop_errors, describe_loop_errors(loop_errors)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:5]]
