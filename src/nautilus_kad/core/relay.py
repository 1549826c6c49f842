"""The relay: circuits between an initiator and a client registered here, carrying sealed
channel datagrams it cannot read.

A circuit is opened by a CONNECT asking for one (core/connector.py), only towards a node
registered here (its registration is its reservation), and within limits: ``max_circuits``
in all, ``max_circuits_per_peer`` towards one registered node and from one initiator IP,
each for at most ``circuit_duration`` and ``circuit_bytes`` per direction, closed after
``circuit_idle`` without traffic. Each side has its own circuit id; a relayed datagram
``0xC1 | 0x04 | circuit id | sealed bytes`` is accepted only from that side's address and
goes out with the other side's id, the same size as it came: a relay never amplifies.
Refusals carry codes (RESOURCE_LIMIT, NO_RELAY) and are counted as ``relay.refused.*``.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass

from .channel import KIND_RELAYED, KIND_RELEASE, RELAY_HEADER
from .messages import Address, TraversalStatus
from .session import SESSION_MAGIC
from .traversalconfig import TraversalConfig


@dataclass(slots=True)
class Circuit:
    a: Address
    """The initiator (where its CONNECT came from)."""
    b: Address
    """The registered target (its observed mapping)."""
    a_id: int
    b_id: int
    target: int
    """The target's node id (the per-peer limit)."""
    created: float
    last: float
    to_b: int = 0
    to_a: int = 0


class Relay:
    """Every circuit of one relay."""

    def __init__(self, config: TraversalConfig, rng: random.Random, stats: Counter[str]) -> None:
        self.config = config
        self._rng = rng
        self.stats = stats
        self._by_id: dict[int, tuple[Circuit, bool]] = {}
        """Circuit id → (circuit, whether the id is the initiator's side)."""
        self.circuits: list[Circuit] = []
        self._ended: OrderedDict[int, Address] = OrderedDict()
        """Ids of recently closed circuits → that side's address: a datagram still sent on
        one gets a 6-byte end notice, so the channel learns its relay is gone."""

    def __len__(self) -> int:
        return len(self.circuits)

    def open(
        self, a: Address, b: Address, target: int, now: float
    ) -> tuple[TraversalStatus, Circuit | None]:
        """A new circuit from ``a`` to the registered ``b``, or the code refusing it."""
        config = self.config
        self.expire(now)
        if not config.relay:
            return self._refuse(TraversalStatus.NO_RELAY)
        if len(self.circuits) >= config.max_circuits:
            return self._refuse(TraversalStatus.RESOURCE_LIMIT)
        per_target = sum(1 for c in self.circuits if c.target == target)
        per_ip = sum(1 for c in self.circuits if c.a[0] == a[0])
        if max(per_target, per_ip) >= config.max_circuits_per_peer:
            return self._refuse(TraversalStatus.RESOURCE_LIMIT)
        circuit = Circuit(a, b, self._new_id(), 0, target, now, now)
        circuit.b_id = self._new_id()
        self._by_id[circuit.a_id] = (circuit, True)
        self._by_id[circuit.b_id] = (circuit, False)
        self.circuits.append(circuit)
        self.stats["relay.circuits.opened"] += 1
        return TraversalStatus.OK, circuit

    def _refuse(self, status: TraversalStatus) -> tuple[TraversalStatus, None]:
        self.stats[f"relay.refused.{status.name.lower()}"] += 1
        return status, None

    def _new_id(self) -> int:
        while True:
            cid = self._rng.randint(1, 2**32 - 1)
            if cid not in self._by_id:
                return cid

    def is_open(self, circuit: Circuit) -> bool:
        return self._by_id.get(circuit.a_id, (None, True))[0] is circuit

    def knows(self, data: bytes) -> bool:
        """Whether a relayed datagram names one of our circuits, live or recently ended
        (else it may be for one of our own channels, relayed by another node)."""
        if len(data) <= RELAY_HEADER.size:
            return False
        cid = RELAY_HEADER.unpack_from(data)[2]
        return cid in self._by_id or cid in self._ended

    def ended(self, data: bytes, source: Address) -> tuple[bytes, Address] | None:
        """The end notice for a datagram on a circuit that ended (from its own side)."""
        cid = RELAY_HEADER.unpack_from(data)[2]
        if self._ended.get(cid) != source:
            return None
        self.stats["relay.ended_notices"] += 1
        return RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELEASE, cid), source

    def forward(self, data: bytes, source: Address, now: float) -> list[tuple[bytes, Address]]:
        """The datagrams to send for a relayed datagram from ``source``: the datagram on to
        the other side; nothing (dropped and counted: unknown circuit, wrong sender); or, on
        a circuit that ended, end notices (to both sides when this datagram hit the limit
        that ended it: the initiator can ask for a new circuit at once, core/connector.py)."""
        if len(data) <= RELAY_HEADER.size:
            self._drop("short")
            return []
        cid = RELAY_HEADER.unpack_from(data)[2]
        found = self._by_id.get(cid)
        if found is None:
            self._drop("ended" if cid in self._ended else "unknown")
            notice = self.ended(data, source)
            return [] if notice is None else [notice]
        circuit, from_a = found
        if source != (circuit.a if from_a else circuit.b):
            self._drop("sender")
            return []
        if self._expired(circuit, now):
            return self._ended_by(circuit, "expired")
        size = len(data) - RELAY_HEADER.size
        config = self.config
        carried = (circuit.to_b if from_a else circuit.to_a) + size
        if carried > config.circuit_bytes:
            return self._ended_by(circuit, "bytes")
        if from_a:
            circuit.to_b = carried
        else:
            circuit.to_a = carried
        circuit.last = now
        self.stats["relay.bytes"] += size
        self.stats["relay.datagrams"] += 1
        other_id, other = (circuit.b_id, circuit.b) if from_a else (circuit.a_id, circuit.a)
        return [(RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELAYED, other_id) + data[6:], other)]

    def _ended_by(self, circuit: Circuit, reason: str) -> list[tuple[bytes, Address]]:
        """A limit ended ``circuit``: a 6-byte end notice to each side (one datagram in,
        two of 6 bytes out, once per circuit: no amplifier)."""
        self.close(circuit, reason)
        self._drop(reason)
        self.stats["relay.ended_notices"] += 2
        return [
            (RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELEASE, circuit.a_id), circuit.a),
            (RELAY_HEADER.pack(SESSION_MAGIC, KIND_RELEASE, circuit.b_id), circuit.b),
        ]

    def _drop(self, reason: str) -> None:
        # Also under rx.dropped.<reason>, as every other drop: the metric of drops by reason
        # (and the rule that every dropped datagram has one) covers relayed datagrams too.
        self.stats["rx.dropped"] += 1
        self.stats[f"rx.dropped.relay.{reason}"] += 1
        self.stats["relay.dropped"] += 1
        self.stats[f"relay.dropped.{reason}"] += 1

    def release(self, data: bytes, source: Address) -> None:
        """A side closes its circuit (checked against its address)."""
        if len(data) != RELAY_HEADER.size:
            self._drop("short")
            return
        found = self._by_id.get(RELAY_HEADER.unpack_from(data)[2])
        if found is None or source != (found[0].a if found[1] else found[0].b):
            self._drop("release")
            return
        self.close(found[0], "released")

    def close(self, circuit: Circuit, reason: str) -> None:
        if self._by_id.pop(circuit.a_id, None) is not None:
            self._by_id.pop(circuit.b_id, None)
            self.circuits.remove(circuit)
            self._ended[circuit.a_id] = circuit.a
            self._ended[circuit.b_id] = circuit.b
            while len(self._ended) > 2048:
                self._ended.popitem(last=False)
            self.stats["relay.circuits.closed"] += 1
            self.stats[f"relay.circuits.closed.{reason}"] += 1

    def _expired(self, circuit: Circuit, now: float) -> bool:
        config = self.config
        return (
            now - circuit.created > config.circuit_duration
            or now - circuit.last > config.circuit_idle
        )

    def expire(self, now: float) -> None:
        for circuit in [c for c in self.circuits if self._expired(c, now)]:
            self.close(circuit, "expired")
