"""A tiny in-memory network of sans-I/O engines for protocol tests.

Datagrams are delivered instantly and in order; time only moves when a test asks for it, so
every test is deterministic. Hooks let a test drop, rewrite or record datagrams in flight.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import Event
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.messages import Address

Filter = Callable[[bytes, Address, Address], bytes | None]
"""(data, source, destination) -> the datagram to deliver, or None to drop it."""


class EngineNet:
    def __init__(self, size: int, *, config: KadConfig | None = None, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.now = 1_000_000.0
        self.config = config or KadConfig()
        self.engines: dict[Address, KadEngine] = {}
        self.events: dict[Address, list[Event]] = {}
        self.filter: Filter | None = None
        self.sent: list[tuple[bytes, Address, Address]] = []
        for _ in range(size):
            self.add()

    def add(self, *, config: KadConfig | None = None, **kwargs: Any) -> KadEngine:
        index = len(self.engines)
        identity = Identity.generate(self.rng)
        engine = KadEngine(
            identity,
            config=config or self.config,
            rng=random.Random(self.rng.getrandbits(64)),
            now=self.now,
            **kwargs,
        )
        address = ("10.0.0.1", 20000 + index)
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

    # --- delivery ----------------------------------------------------------------------

    def deliver(self, max_datagrams: int = 200_000) -> int:
        """Deliver everything queued (and what that triggers) until the network is quiet."""
        delivered = 0
        while True:
            moved = False
            for source, engine in list(self.engines.items()):
                for data, destination in engine.datagrams_to_send():
                    moved = True
                    self.sent.append((data, source, destination))
                    payload: bytes | None = data
                    if self.filter is not None:
                        payload = self.filter(data, source, destination)
                        if payload is None:
                            continue
                    target = self.engines.get(destination)
                    if target is not None:
                        target.receive_datagram(payload, source, self.now)
                        delivered += 1
                        if delivered > max_datagrams:
                            raise AssertionError("network did not settle")
            self._collect()
            if not moved:
                return delivered

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
        """Move time forward, running every timer that falls due, and deliver."""
        end = self.now + seconds
        while True:
            due = min(engine.get_timer() for engine in self.engines.values())
            if due > end:
                break
            self.now = max(self.now, due)
            for engine in self.engines.values():
                if engine.get_timer() <= self.now:
                    engine.handle_timer(self.now)
            self.deliver()
        self.now = end
        self.deliver()

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

    # --- scenarios -----------------------------------------------------------------------

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
