"""The simulated network: latency, loss, partitions and dead hosts, all from one seed.

Endpoints exchange the exact bytes the engine's encoder produced; the receiving engine runs
them through its real decoder. The network only decides *whether* and *when* a datagram
arrives:

* **latency** — every link (unordered pair of endpoints) has a fixed base one-way delay drawn
  from a :class:`LatencyModel` (default: log-normal with a 40 ms median, a realistic
  wide-area spread). The draw is a pure function of the seed and the two endpoints, so it
  costs no memory per link and does not depend on the order in which links are first used.
  Each datagram adds a little jitter on top (so datagrams can overtake each other);
* **loss** — each datagram is dropped independently with probability ``loss``;
* **partitions** — :meth:`Network.partition` splits endpoints into groups that cannot reach
  each other until :meth:`Network.heal`;
* **down hosts** — datagrams to an endpoint that is down (or unknown) vanish, including those
  already in flight when it went down, exactly as UDP to a dead host does;
* **NATs** — hosts attached behind a :class:`~.nat.NatBox` send through it (the receiver
  sees the box's external address) and receive only what its mapping and filter let in; a
  private address behind a box cannot be reached from outside it. Without boxes, nothing
  of this runs (the same seeds give the same runs as before boxes existed).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heappush
from statistics import NormalDist
from typing import Protocol

from ..core.messages import Address
from .nat import NatBox
from .scheduler import Scheduler

_MASK64 = (1 << 64) - 1
LINK_LEVELS = 1 << 16
"""How finely per-link delays resolve the latency distribution (equally likely levels)."""
_LEVEL_MASK = LINK_LEVELS - 1
_STANDARD_NORMAL = NormalDist()


def _mix64(x: int) -> int:  # used once per network, to spread the seed
    """SplitMix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


# --- latency models -------------------------------------------------------------------------


class LatencyModel(Protocol):
    """A distribution of one-way link delays (seconds), given by its quantile function."""

    def quantile(self, u: float) -> float:
        """The delay at cumulative probability ``u`` (0 < u < 1)."""
        ...


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """Log-normal one-way delays: ``median`` seconds, log-space spread ``sigma``, never below
    ``minimum``. The default (40 ms median, sigma 0.6) puts p10 near 19 ms and p99 near
    160 ms, the shape of wide-area paths."""

    median: float = 0.040
    sigma: float = 0.6
    minimum: float = 0.001

    def __post_init__(self) -> None:
        if not (self.median > 0 and self.sigma >= 0 and self.minimum >= 0):
            raise ValueError("need median > 0, sigma >= 0, minimum >= 0")

    def quantile(self, u: float) -> float:
        if self.sigma == 0:
            return max(self.minimum, self.median)
        z = _STANDARD_NORMAL.inv_cdf(u)
        return max(self.minimum, self.median * math.exp(self.sigma * z))


@dataclass(frozen=True, slots=True)
class ConstantLatency:
    """The same delay on every link."""

    delay: float = 0.020

    def __post_init__(self) -> None:
        if not self.delay >= 0:
            raise ValueError("delay must be >= 0")

    def quantile(self, u: float) -> float:
        return self.delay


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """Delays spread evenly between ``low`` and ``high``."""

    low: float = 0.010
    high: float = 0.100

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError("need 0 <= low <= high")

    def quantile(self, u: float) -> float:
        return self.low + (self.high - self.low) * u


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(us|ms|s|m|h)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"40ms"``, ``"1.5s"``, ``"30m"``, ``"2h"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 40ms, 1.5s, 30m, 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_latency(text: str) -> LatencyModel:
    """A latency model from text: ``lognormal[:MEDIAN[,SIGMA]]``, ``constant:DELAY`` or
    ``uniform:LOW,HIGH`` (durations like ``40ms``)."""
    name, _, rest = text.strip().partition(":")
    args = [a for a in rest.split(",") if a.strip()] if rest else []
    name = name.lower()
    try:
        if name == "lognormal" and len(args) <= 2:
            median = parse_duration(args[0]) if args else 0.040
            sigma = float(args[1]) if len(args) > 1 else 0.6
            return LogNormalLatency(median, sigma)
        if name == "constant" and len(args) == 1:
            return ConstantLatency(parse_duration(args[0]))
        if name == "uniform" and len(args) == 2:
            return UniformLatency(parse_duration(args[0]), parse_duration(args[1]))
    except ValueError as exc:
        raise ValueError(f"bad latency model {text!r}: {exc}") from None
    raise ValueError(
        f"bad latency model {text!r}: use lognormal[:MEDIAN[,SIGMA]], constant:DELAY "
        "or uniform:LOW,HIGH"
    )


# --- the network --------------------------------------------------------------------------

Receiver = Callable[[bytes, Address], None]
"""What an endpoint does with an arriving datagram: ``receive(data, source_address)``."""


class Endpoint:
    """One attached address: its receiver, whether it is up, its partition group, and the
    NAT it sits behind (None: directly on the network)."""

    __slots__ = ("address", "group", "index", "nat", "receiver", "up")

    def __init__(
        self, address: Address, index: int, receiver: Receiver, nat: NatBox | None = None
    ) -> None:
        self.address = address
        self.index = index
        self.receiver = receiver
        self.up = True
        self.group = 0
        self.nat = nat


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    """Datagrams handed to the network."""
    delivered: int = 0
    lost: int = 0
    """Dropped by random loss."""
    to_down: int = 0
    """Addressed to a host that is down or was never there (including in flight)."""
    partitioned: int = 0
    """Dropped because a partition separated the two ends."""
    bytes_sent: int = 0
    nat_dropped: int = 0
    """Dropped by a NAT: no mapping, filtered, no hairpinning, or a private address
    addressed from outside its NAT."""


class Network:
    """Carries datagrams between endpoints through a :class:`Scheduler`.

    ``rng`` supplies the per-datagram randomness (loss, jitter); ``seed`` fixes the per-link
    base delays. Same seeds and the same sequence of calls give the same deliveries.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        rng: random.Random,
        *,
        seed: int = 0,
        latency: LatencyModel | None = None,
        loss: float = 0.0,
        jitter: float = 0.1,
    ) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.latency = latency if latency is not None else LogNormalLatency()
        self.loss = loss
        self.jitter = jitter
        self.stats = NetworkStats()
        self._seed = _mix64(seed & _MASK64)
        self._endpoints: dict[Address, Endpoint] = {}
        self._nats: dict[str, NatBox] = {}
        self._next_index = 0
        self._trace: hashlib._Hash | None = None

    # --- parameters ------------------------------------------------------------------

    @property
    def latency(self) -> LatencyModel:
        """The distribution of per-link base delays (changing it re-draws every link)."""
        return self._latency

    @latency.setter
    def latency(self, model: LatencyModel) -> None:
        levels = [model.quantile((n + 0.5) / LINK_LEVELS) for n in range(LINK_LEVELS)]
        if not all(math.isfinite(x) and x >= 0 for x in levels):
            raise ValueError("latency model gave a negative or infinite delay")
        self._latency = model
        self._levels = levels

    @property
    def loss(self) -> float:
        return self._loss

    @loss.setter
    def loss(self, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError("loss must lie in [0, 1)")
        self._loss = value

    @property
    def jitter(self) -> float:
        return self._jitter

    @jitter.setter
    def jitter(self, value: float) -> None:
        if not 0.0 <= value <= 10.0:
            raise ValueError("jitter must lie in [0, 10]")
        self._jitter = value

    def enable_trace(self) -> None:
        """Hash every datagram's fate (time, ends, bytes) into :meth:`trace_digest`."""
        if self._trace is None:
            self._trace = hashlib.sha256()

    def trace_digest(self) -> str | None:
        return None if self._trace is None else self._trace.hexdigest()

    # --- endpoints -------------------------------------------------------------------

    def add_nat(self, box: NatBox) -> None:
        """Put a NAT on the network: from now on it owns every port of ``box.ip``."""
        if box.ip in self._nats or any(a[0] == box.ip for a in self._endpoints):
            raise ValueError(f"address {box.ip} is already in use")
        self._nats[box.ip] = box

    def renumber_nat(self, box: NatBox, ip: str) -> None:
        """Give ``box`` the external IP ``ip`` (which must be free): its mappings are lost,
        and what is sent to its old IP reaches nobody."""
        if ip in self._nats or any(a[0] == ip for a in self._endpoints):
            raise ValueError(f"address {ip} is already in use")
        if self._nats.get(box.ip) is not box:
            raise ValueError("that NAT is not on this network")
        del self._nats[box.ip]
        box.renumber(ip)
        self._nats[ip] = box

    def nat(self, ip: str) -> NatBox | None:
        return self._nats.get(ip)

    def attach(self, address: Address, receiver: Receiver, nat: NatBox | None = None) -> Endpoint:
        """Put a new host on the network at ``address`` (which must be free), behind ``nat``
        if given (``address`` is then its private address inside that NAT)."""
        if address in self._endpoints or address[0] in self._nats:
            raise ValueError(f"address {address} is already attached")
        if nat is not None and self._nats.get(nat.ip) is not nat:
            raise ValueError("add the NAT to the network first")
        endpoint = Endpoint(address, self._next_index, receiver, nat)
        self._next_index += 1
        self._endpoints[address] = endpoint
        return endpoint

    def detach(self, address: Address) -> None:
        """Remove a host for good: datagrams to it, in flight or later, vanish."""
        endpoint = self._endpoints.pop(address, None)
        if endpoint is not None:
            endpoint.up = False

    def endpoint(self, address: Address) -> Endpoint | None:
        return self._endpoints.get(address)

    def set_up(self, address: Address, up: bool) -> None:
        """Take a host down (datagrams to it vanish) or bring it back."""
        self._endpoints[address].up = up

    def __len__(self) -> int:
        return len(self._endpoints)

    # --- partitions --------------------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[Address]]) -> None:
        """Split the network: the listed groups and everyone unlisted (one more group) can
        only reach hosts in their own group. Replaces any earlier partition."""
        self.heal()
        for number, group in enumerate(groups, start=1):
            for address in group:
                self._endpoints[address].group = number

    def heal(self) -> None:
        """End every partition."""
        for endpoint in self._endpoints.values():
            endpoint.group = 0

    # --- delays ------------------------------------------------------------------------

    def link_delay(self, a: Endpoint, b: Endpoint) -> float:
        """The fixed base one-way delay of the link between ``a`` and ``b``: the latency
        model's quantile at a point hashed from the seed and the two endpoints (rounded to
        one of :data:`LINK_LEVELS` levels, so the quantiles are computed once)."""
        i = a.index
        j = b.index
        if i > j:
            i, j = j, i
        h = (((i << 32) | j) ^ self._seed) * 0x9E3779B97F4A7C15 & _MASK64
        h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9 & _MASK64
        return self._levels[(h ^ (h >> 32)) & _LEVEL_MASK]

    # --- carrying datagrams ------------------------------------------------------------

    def send(self, source: Endpoint, data: bytes, destination: Address) -> None:
        """Carry ``data`` from ``source`` to ``destination`` (or lose it)."""
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += len(data)
        if self._nats and self._send_nat(source, data, destination):
            return
        target = self._endpoints.get(destination)
        if target is None or not target.up:
            stats.to_down += 1
            fate = 0
        elif target.group != source.group:
            stats.partitioned += 1
            fate = 1
        elif self._loss and self.rng.random() < self._loss:
            stats.lost += 1
            fate = 2
        else:
            # link_delay(source, target), inlined: this runs for every datagram.
            i = source.index
            j = target.index
            if i > j:
                i, j = j, i
            h = (((i << 32) | j) ^ self._seed) * 0x9E3779B97F4A7C15 & _MASK64
            h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9 & _MASK64
            delay = self._levels[(h ^ (h >> 32)) & _LEVEL_MASK]
            if self._jitter:
                delay *= 1.0 + self._jitter * self.rng.random()
            scheduler = self.scheduler
            # Scheduler.post inlined (the delay is positive, so never in the past)
            scheduler._seq += 1
            heappush(
                scheduler._heap,
                (scheduler.now + delay, scheduler._seq, self._deliver, (source, target, data)),
            )
            fate = 3
        if self._trace is not None:
            self._record(source, target, fate, data)

    def _send_nat(self, source: Endpoint, data: bytes, destination: Address) -> bool:
        """Carry a datagram that crosses a NAT (True), or leave it to the plain path."""
        now = self.scheduler.now
        inside = source.nat
        apparent = source.address
        if inside is not None:
            target = self._endpoints.get(destination)
            if target is not None and target.nat is inside:  # the same LAN
                self._carry(source, target, data, apparent)
                return True
            if destination[0] == inside.ip and not inside.type.hairpin:
                self._nat_drop(source, data)
                return True
            apparent = inside.outbound(source.address, destination, now)
        box = self._nats.get(destination[0])
        if box is not None:
            internal = box.inbound(apparent, destination[1], now)
            target = self._endpoints.get(internal) if internal is not None else None
            if target is None:
                self._nat_drop(source, data)
                return True
        else:
            target = self._endpoints.get(destination)
            if target is not None and target.nat is not None:
                self._nat_drop(source, data)  # a private address, from outside its NAT
                return True
            if inside is None:
                return False
        self._carry(source, target, data, apparent)
        return True

    def _nat_drop(self, source: Endpoint, data: bytes) -> None:
        self.stats.nat_dropped += 1
        if self._trace is not None:
            self._record(source, None, 4, data)

    def _carry(
        self, source: Endpoint, target: Endpoint | None, data: bytes, apparent: Address
    ) -> None:
        """:meth:`send`'s fates for a datagram the receiver sees coming from ``apparent``."""
        stats = self.stats
        if target is None or not target.up:
            stats.to_down += 1
            fate = 0
        elif target.group != source.group:
            stats.partitioned += 1
            fate = 1
        elif self._loss and self.rng.random() < self._loss:
            stats.lost += 1
            fate = 2
        else:
            delay = self.link_delay(source, target)
            if self._jitter:
                delay *= 1.0 + self._jitter * self.rng.random()
            self.scheduler.post(
                self.scheduler.now + delay, self._deliver_from, source, target, data, apparent
            )
            fate = 3
        if self._trace is not None:
            self._record(source, target, fate, data)

    def _deliver_from(
        self, source: Endpoint, target: Endpoint, data: bytes, apparent: Address
    ) -> None:
        if not target.up:
            self.stats.to_down += 1
            return
        if target.group != source.group:
            self.stats.partitioned += 1
            return
        self.stats.delivered += 1
        target.receiver(data, apparent)

    def _deliver(self, source: Endpoint, target: Endpoint, data: bytes) -> None:
        if not target.up:
            self.stats.to_down += 1
            return
        if target.group != source.group:
            self.stats.partitioned += 1
            return
        self.stats.delivered += 1
        target.receiver(data, source.address)

    def _record(self, source: Endpoint, target: Endpoint | None, fate: int, data: bytes) -> None:
        trace = self._trace
        assert trace is not None
        trace.update(
            struct.pack(
                ">dqqBH",
                self.scheduler.now,
                source.index,
                -1 if target is None else target.index,
                fate,
                len(data),
            )
        )
        trace.update(data)
