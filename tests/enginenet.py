"""The in-memory network of sans-I/O engines that engine-level tests run on.

Not a simulator (that is :mod:`nautilus_kad.sim`): datagrams are delivered instantly and in
order, time moves only when a test calls :meth:`EngineNet.advance`, and every test is
deterministic. Each node has its own address 10.0.x.y (so per-source quotas see distinct
sources). Hooks let a test drop, rewrite or record datagrams in flight (:attr:`filter`), hand
a node a crafted datagram (:meth:`inject`), or cut a node off (:meth:`kill`). :class:`Peer` is
the other kind of participant: an identity without an engine that crafts each datagram itself.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import FLAG_CLIENT, TOKEN_BYTES, KadEngine
from nautilus_kad.core.events import BootstrapDone, Event
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId, key_id
from nautilus_kad.core.messages import (
    Address,
    Envelope,
    FindNode,
    Message,
    Nodes,
    Pong,
    Store,
)
from nautilus_kad.core.records import Record

START = 1_000_000.0

Filter = Callable[[bytes, Address, Address], bytes | None]
"""(data, source, destination) -> the datagram to deliver, or None to drop it."""


class EngineNet:
    def __init__(
        self, size: int = 0, *, config: KadConfig | None = None, seed: int = 1, now: float = START
    ) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.config = config or KadConfig()
        self.engines: dict[Address, KadEngine] = {}
        self.events: dict[Address, list[Event]] = {}
        self.down: set[Address] = set()
        self.filter: Filter | None = None
        self.sent: list[tuple[bytes, Address, Address]] = []
        """Every datagram a live node sent, dropped or not."""
        self.lost = 0
        """Datagrams to a node that is down or unknown."""
        for _ in range(size):
            self.add()

    # --- membership ------------------------------------------------------------------

    def add(
        self,
        *,
        identity: Identity | None = None,
        node_id_near: NodeId | None = None,
        near_bits: int = 10,
        config: KadConfig | None = None,
        **kwargs: Any,
    ) -> KadEngine:
        """A new node (``kwargs`` go to :class:`KadEngine`: ``store``, ``client_mode``...)."""
        if identity is None:
            identity = Identity.generate(self.rng)
            if node_id_near is not None:
                # Draw identities until one shares ``near_bits`` leading bits with the id.
                while (identity.node_id ^ node_id_near).bit_length() > 256 - near_bits:
                    identity = Identity.generate(self.rng)
        n = len(self.engines) + 1
        address = (f"10.0.{n // 250}.{n % 250 + 1}", 4000)
        engine = KadEngine(
            identity,
            config=config or self.config,
            rng=random.Random(self.rng.getrandbits(64)),
            now=self.now,
            **kwargs,
        )
        engine.address = address
        self.engines[address] = engine
        self.events[address] = []
        return engine

    @property
    def addresses(self) -> list[Address]:
        return list(self.engines)

    def engine(self, index: int) -> KadEngine:
        return self.engines[self.addresses[index]]

    def address_of(self, engine: KadEngine) -> Address:
        assert engine.address is not None
        return engine.address

    def join(self, engine: KadEngine, seed: KadEngine) -> None:
        engine.bootstrap([self.address_of(seed)], self.now)
        self.deliver()

    def join_all(self) -> None:
        """Every node bootstraps through the first one."""
        seed = self.addresses[0]
        for engine in list(self.engines.values())[1:]:
            qid = engine.bootstrap([seed], self.now)
            self.wait_for(engine, qid)
        # A second round lets early joiners learn about later ones.
        for engine in list(self.engines.values())[1:]:
            qid = engine.find_node(engine.node_id, self.now)
            self.wait_for(engine, qid)

    def kill(self, engine: KadEngine) -> None:
        """Cut ``engine`` off: it neither sends nor receives from now on."""
        self.down.add(self.address_of(engine))

    def live(self) -> list[KadEngine]:
        return [e for a, e in self.engines.items() if a not in self.down]

    # --- moving datagrams and time ---------------------------------------------------

    def deliver(self, max_datagrams: int = 1_000_000) -> int:
        """Deliver everything queued, and everything that provokes, until the net is quiet."""
        queue: deque[tuple[bytes, Address, Address]] = deque()
        delivered = 0
        while True:
            for address, engine in self.engines.items():
                if address in self.down:
                    engine.datagrams_to_send()
                    continue
                for data, destination in engine.datagrams_to_send():
                    queue.append((data, address, destination))
            self._collect()
            if not queue:
                return delivered
            while queue:
                data, source, destination = queue.popleft()
                self.sent.append((data, source, destination))
                payload: bytes | None = data
                if self.filter is not None:
                    payload = self.filter(data, source, destination)
                    if payload is None:
                        continue
                target = self.engines.get(destination)
                if target is None or destination in self.down:
                    self.lost += 1
                    continue
                target.receive_datagram(payload, source, self.now)
                delivered += 1
                if delivered > max_datagrams:
                    raise AssertionError("network did not settle")

    def inject(self, data: bytes, source: Address, destination: Address) -> None:
        """Hand ``data`` to the engine at ``destination`` as if ``source`` had sent it."""
        self.engines[destination].receive_datagram(data, source, self.now)
        self._collect()

    def _collect(self) -> None:
        for address, engine in self.engines.items():
            event = engine.next_event()
            while event is not None:
                self.events[address].append(event)
                event = engine.next_event()

    def advance(self, seconds: float) -> None:
        """Run every timer of a live node due in the next ``seconds``, in time order,
        delivering as we go."""
        end = self.now + seconds
        self.deliver()
        while True:
            live = self.live()
            due = min((e.get_timer() for e in live), default=end)
            if due > end:
                break
            self.now = max(self.now, due)
            for engine in live:
                if engine.get_timer() <= self.now:
                    engine.handle_timer(self.now)
            self.deliver()
        self.now = end
        self.deliver()

    def advance_to(self, when: float) -> None:
        """:meth:`advance` to the absolute time ``when``."""
        self.advance(max(0.0, when - self.now))

    def result(self, engine: KadEngine, query_id: int) -> Event:
        """Deliver; then ``engine`` has reported exactly one end of ``query_id`` (kept)."""
        self.deliver()
        found = [
            e for e in self.events[self.address_of(engine)]
            if getattr(e, "query_id", None) == query_id
        ]  # fmt: skip
        assert len(found) == 1, f"expected one result for query {query_id}, got {found}"
        return found[0]

    def pending_result(self, engine: KadEngine, query_id: int) -> bool:
        """Whether ``engine`` has reported the end of ``query_id`` yet."""
        events = self.events[self.address_of(engine)]
        return any(getattr(e, "query_id", None) == query_id for e in events)

    def wait_for(self, engine: KadEngine, query_id: int, *, timeout: float = 30.0) -> Event:
        """Deliver and advance time until ``engine`` reports the end of ``query_id``."""
        address = self.address_of(engine)
        deadline = self.now + timeout
        while True:
            self.deliver()
            for event in self.events[address]:
                if getattr(event, "query_id", None) == query_id:
                    self.events[address].remove(event)
                    return event
            if self.now >= deadline:
                raise AssertionError(f"query {query_id} did not finish in {timeout} s")
            self.advance(min(0.05, deadline - self.now))

    # --- helpers ---------------------------------------------------------------------

    def take(self, engine: KadEngine, kind: type[Event]) -> list[Event]:
        """The events of ``kind`` ``engine`` reported so far (removed from its list)."""
        address = self.address_of(engine)
        events = self.events[address]
        found = [e for e in events if isinstance(e, kind)]
        self.events[address] = [e for e in events if not isinstance(e, kind)]
        return found

    def record(self, key: NodeId, value: bytes, ttl: int = 86_400) -> Record:
        return Record(key, value, int(self.now * 1000), ttl)

    def holders(self, key: NodeId) -> list[KadEngine]:
        return [e for e in self.live() if e.store.get(key, self.now) is not None]

    def true_closest(self, key: int, count: int) -> list[KadEngine]:
        return sorted(self.live(), key=lambda e: e.node_id ^ key)[:count]


def build(count: int, config: KadConfig, seed: int = 1) -> tuple[EngineNet, list[KadEngine]]:
    """``count`` engines joined one after another through the first."""
    net = EngineNet(config=config, seed=seed)
    first = net.add()
    engines = [first]
    for _ in range(count - 1):
        engine = net.add()
        net.join(engine, first)
        engines.append(engine)
    net.advance(1.0)
    return net, engines


# --- a hand-driven peer and small helpers --------------------------------------------------


def addr(engine: KadEngine) -> Address:
    """The engine's bound address (always set by this harness)."""
    assert engine.address is not None
    return engine.address


def bootstrapped(n: int, config: KadConfig | None = None, seed: int = 0) -> EngineNet:
    """``n`` engines joined one after another through the first, at time 0."""
    net = EngineNet(config=config, seed=seed, now=0.0)
    first = net.add()
    for _ in range(n - 1):
        engine = net.add()
        qid = engine.bootstrap([addr(first)], net.now)
        done = net.result(engine, qid)
        assert isinstance(done, BootstrapDone), done
        assert done.table_size >= 1
    return net


def truth(
    ids: Iterable[NodeId], target: int, k: int, exclude: NodeId | None = None
) -> list[NodeId]:
    return sorted((n for n in ids if n != exclude), key=lambda n: n ^ target)[:k]


def open_record(key: bytes, value: bytes, ts: int = 1_000, ttl: int = 3600) -> Record:
    return Record(key_id(key), value, ts, ttl)


# --- a hand-driven peer: an identity without an engine -----------------------------------


class Peer:
    """A raw peer that crafts datagrams itself (for tests of hostile or exact input)."""

    def __init__(self, seed: int, address: Address = ("192.0.2.50", 5000)) -> None:
        self.identity = Identity.generate(random.Random(seed))
        self.auth = Authenticator(self.identity)
        self.address = address
        self.rng = random.Random(seed + 1)

    def request(
        self,
        engine: KadEngine,
        message: Message,
        now: float,
        *,
        address: Address | None = None,
        flags: int = FLAG_CLIENT,
    ) -> Envelope:
        """Send ``message`` to ``engine``; return its answer (decoded, checked)."""
        txid = self.rng.randbytes(8)
        src = address or self.address
        engine.receive_datagram(encode_message(message, txid, self.auth, flags), src, now)
        answers = [
            decode_datagram(data, self.auth)
            for data, dst in engine.datagrams_to_send()
            if dst == src
        ]
        matching = [a for a in answers if a.txid == txid]
        assert len(matching) == 1, answers
        assert matching[0].sender_id == engine.node_id
        return matching[0]

    def token(self, engine: KadEngine, now: float, address: Address | None = None) -> bytes:
        answer = self.request(engine, FindNode(NodeId(1)), now, address=address).message
        assert isinstance(answer, Nodes)
        assert len(answer.token) == TOKEN_BYTES
        return answer.token

    def store(
        self,
        engine: KadEngine,
        record: Record,
        token: bytes,
        now: float,
        address: Address | None = None,
    ) -> Message:
        return self.request(engine, Store(record, token), now, address=address).message

    def answer(
        self, engine: KadEngine, reply: Callable[[Envelope], Message | None], now: float
    ) -> int:
        """Answer every request ``engine`` queued for us; returns how many were answered."""
        answered = 0
        for data, dst in engine.datagrams_to_send():
            if dst != self.address:
                continue
            env = decode_datagram(data, self.auth)
            response = reply(env)
            if response is not None:
                out = encode_message(response, env.txid, self.auth)
                engine.receive_datagram(out, self.address, now)
                answered += 1
        return answered


def lone_engine(seed: int = 1, config: KadConfig | None = None) -> KadEngine:
    engine = KadEngine(
        Identity.generate(random.Random(seed)),
        config=config,
        rng=random.Random(seed + 1000),
        now=0.0,
    )
    engine.address = ("10.1.0.1", 4000)
    return engine


def held(engine: KadEngine, key: NodeId, now: float) -> Record | None:
    stored = engine.store.get(key, now)
    return None if stored is None else stored.record


def decode_out(engine: KadEngine) -> list[tuple[Envelope, Address]]:
    reader = Authenticator(Identity.generate(random.Random(999)))
    return [(decode_datagram(d, reader), a) for d, a in engine.datagrams_to_send()]


def known_by(engine: KadEngine, peer: Peer) -> None:
    """``engine`` pings ``peer``, which answers: it is in the table from now on."""
    engine.ping(peer.address, 0.0)
    assert peer.answer(engine, lambda env: Pong(addr(engine)), 0.0) == 1
    assert peer.identity.node_id in engine.table
    while engine.next_event() is not None:
        pass
