"""A handful of engines wired back to back, for engine-level tests with explicit ``now``.

Not a simulator (that is :mod:`nautilus_kad.sim`): datagrams are delivered instantly and in
order, time moves only when a test calls :meth:`EngineNet.advance`, and nodes are addressed
10.0.x.y (one address each, so per-source quotas see distinct sources).
"""

from __future__ import annotations

import random
from collections import deque

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import Event
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import Address
from nautilus_kad.core.records import Record
from nautilus_kad.core.storage import RecordStore

START = 1_000_000.0


class EngineNet:
    def __init__(self, config: KadConfig, seed: int = 1) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.now = START
        self.engines: dict[Address, KadEngine] = {}
        self.down: set[Address] = set()
        self.events: dict[Address, list[Event]] = {}
        self.sent = 0

    # --- membership ------------------------------------------------------------------

    def add(
        self,
        *,
        identity: Identity | None = None,
        store: RecordStore | None = None,
        node_id_near: NodeId | None = None,
        near_bits: int = 10,
        config: KadConfig | None = None,
    ) -> KadEngine:
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
            store=store,
        )
        engine.address = address
        self.engines[address] = engine
        self.events[address] = []
        return engine

    def join(self, engine: KadEngine, seed: KadEngine) -> None:
        assert seed.address is not None
        engine.bootstrap([seed.address], self.now)
        self.deliver()

    def kill(self, engine: KadEngine) -> None:
        assert engine.address is not None
        self.down.add(engine.address)

    def live(self) -> list[KadEngine]:
        return [e for a, e in self.engines.items() if a not in self.down]

    # --- moving datagrams and time ---------------------------------------------------

    def deliver(self) -> None:
        """Deliver everything queued, and everything that provokes, until the net is quiet."""
        queue: deque[tuple[bytes, Address, Address]] = deque()
        while True:
            for address, engine in self.engines.items():
                if address in self.down:
                    engine.datagrams_to_send()
                    continue
                for data, destination in engine.datagrams_to_send():
                    queue.append((data, address, destination))
                event = engine.next_event()
                while event is not None:
                    self.events[address].append(event)
                    event = engine.next_event()
            if not queue:
                return
            while queue:
                data, source, destination = queue.popleft()
                self.sent += 1
                target = self.engines.get(destination)
                if target is None or destination in self.down:
                    continue
                target.receive_datagram(data, source, self.now)

    def advance(self, seconds: float) -> None:
        """Run every timer due in the next ``seconds``, in time order."""
        end = self.now + seconds
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

    # --- helpers ---------------------------------------------------------------------

    def take(self, engine: KadEngine, kind: type[Event]) -> list[Event]:
        assert engine.address is not None
        events = self.events[engine.address]
        found = [e for e in events if isinstance(e, kind)]
        self.events[engine.address] = [e for e in events if not isinstance(e, kind)]
        return found

    def record(self, key: NodeId, value: bytes, ttl: int = 86_400) -> Record:
        return Record(key, value, int(self.now * 1000), ttl)

    def holders(self, key: NodeId) -> list[KadEngine]:
        return [e for e in self.live() if e.store.get(key, self.now) is not None]

    def true_closest(self, key: int, count: int) -> list[KadEngine]:
        return sorted(self.live(), key=lambda e: e.node_id ^ key)[:count]


def build(count: int, config: KadConfig, seed: int = 1) -> tuple[EngineNet, list[KadEngine]]:
    """``count`` engines joined one after another through the first."""
    net = EngineNet(config, seed)
    first = net.add()
    engines = [first]
    for _ in range(count - 1):
        engine = net.add()
        net.join(engine, first)
        engines.append(engine)
    net.advance(1.0)
    return net, engines
