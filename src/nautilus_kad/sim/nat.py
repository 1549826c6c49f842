"""NAT boxes for the simulated network, with the behaviours RFC 4787 names.

A :class:`NatBox` owns one external IP and translates for the hosts behind it:

* **mapping** — which external port an internal ``ip:port`` gets: one for every destination
  (endpoint-independent, the "cone" NATs), one per destination IP (address-dependent) or one
  per destination ``ip:port`` (address-and-port-dependent, "symmetric");
* **filtering** — which inbound datagrams to a mapped port get in: from anyone
  (endpoint-independent, "full cone"), only from IPs the mapping sent to (address-dependent,
  "restricted cone") or only from exact ``ip:port`` it sent to (address-and-port-dependent,
  "port-restricted");
* **binding timeout** — a mapping, and each remote it may hear from, lives ``timeout``
  seconds after the last *outbound* datagram that used it (RFC 4787 REQ-6: outbound refresh);
* **hairpinning** — whether a host may reach another host behind the same NAT (or itself)
  through the NAT's external address.

External ports are drawn from the box's own seeded generator, so runs stay reproducible,
and a box never touches the network's random stream: a simulation without NATs runs exactly
as before boxes existed.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass

from ..core.messages import Address


class Behaviour(enum.Enum):
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


EI = Behaviour.ENDPOINT_INDEPENDENT
AD = Behaviour.ADDRESS_DEPENDENT
APD = Behaviour.ADDRESS_AND_PORT_DEPENDENT


@dataclass(frozen=True, slots=True)
class NatType:
    """A NAT's behaviour: mapping, filtering, binding timeout (s), hairpinning."""

    mapping: Behaviour = EI
    filtering: Behaviour = APD
    timeout: float = 120.0
    hairpin: bool = True

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("a binding timeout must be positive")


FULL_CONE = NatType(EI, EI)
ADDRESS_RESTRICTED = NatType(EI, AD)
PORT_RESTRICTED = NatType(EI, APD)
SYMMETRIC = NatType(APD, APD)
NAT_TYPES = {
    "full-cone": FULL_CONE,
    "address-restricted": ADDRESS_RESTRICTED,
    "port-restricted": PORT_RESTRICTED,
    "symmetric": SYMMETRIC,
}
"""The four classic NATs by name."""


def parse_nat_type(text: str) -> NatType:
    """One of :data:`NAT_TYPES` by name."""
    try:
        return NAT_TYPES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown NAT type {text!r}: use {', '.join(NAT_TYPES)}") from None


class _Binding:
    __slots__ = ("internal", "last_out", "port", "remotes")

    def __init__(self, internal: Address, port: int, now: float) -> None:
        self.internal = internal
        self.port = port
        self.last_out = now
        self.remotes: dict[Address, float] = {}
        """Remote endpoints this mapping sent to, and when last."""


class NatBox:
    """One NAT with external IP ``ip``; hosts join it with :meth:`Network.attach`."""

    def __init__(self, ip: str, nat_type: NatType, seed: int) -> None:
        self.ip = ip
        self.type = nat_type
        self._rng = random.Random(seed)
        self._out: dict[tuple[Address, object], _Binding] = {}
        self._in: dict[int, _Binding] = {}
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        t = self.type
        return f"<NatBox {self.ip} {t.mapping.value}/{t.filtering.value} {len(self._in)}>"

    def renumber(self, ip: str) -> None:
        """The box gets a new external IP (a router that reconnects to its ISP): every
        mapping is lost. Use :meth:`.network.Network.renumber_nat`, which moves its routes."""
        self.ip = ip
        self._out.clear()
        self._in.clear()
        self.stats["renumbered"] += 1

    def _key(self, internal: Address, destination: Address) -> tuple[Address, object]:
        mapping = self.type.mapping
        if mapping is EI:
            return (internal, None)
        if mapping is AD:
            return (internal, destination[0])
        return (internal, destination)

    def _alive(self, binding: _Binding, now: float) -> bool:
        return now - binding.last_out <= self.type.timeout

    def outbound(self, internal: Address, destination: Address, now: float) -> Address:
        """A host behind the box sends to ``destination``: the source address the world
        sees (the mapping is created or refreshed, and ``destination`` may answer)."""
        key = self._key(internal, destination)
        binding = self._out.get(key)
        if binding is None or not self._alive(binding, now):
            if binding is not None:
                self._drop(key, binding)
            binding = _Binding(internal, self._free_port(now), now)
            self._out[key] = binding
            self._in[binding.port] = binding
            self.stats["mappings"] += 1
        binding.last_out = now
        binding.remotes[destination] = now
        return (self.ip, binding.port)

    def inbound(self, source: Address, port: int, now: float) -> Address | None:
        """A datagram from ``source`` arrives at external ``port``: the internal host to
        deliver it to, or None when no live mapping or the filter refuses it."""
        binding = self._in.get(port)
        if binding is None or not self._alive(binding, now):
            self.stats["dropped.no_mapping"] += 1
            return None
        filtering = self.type.filtering
        if filtering is not EI:
            timeout = self.type.timeout
            if filtering is APD:
                sent = binding.remotes.get(source)
                allowed = sent is not None and now - sent <= timeout
            else:
                host = source[0]
                allowed = any(
                    r[0] == host and now - t <= timeout for r, t in binding.remotes.items()
                )
            if not allowed:
                self.stats["dropped.filtered"] += 1
                return None
        self.stats["delivered"] += 1
        return binding.internal

    def external_of(self, internal: Address, destination: Address, now: float) -> Address | None:
        """The mapping ``internal`` would use towards ``destination`` now, without making
        one (None if there is none): what a peer at ``destination`` sees."""
        binding = self._out.get(self._key(internal, destination))
        if binding is None or not self._alive(binding, now):
            return None
        return (self.ip, binding.port)

    def _drop(self, key: tuple[Address, object], binding: _Binding) -> None:
        del self._out[key]
        if self._in.get(binding.port) is binding:
            del self._in[binding.port]
        self.stats["expired"] += 1

    def _free_port(self, now: float) -> int:
        if len(self._in) > 4096:
            self._purge(now)
        while True:
            port = self._rng.randrange(1024, 65536)
            known = self._in.get(port)
            if known is None or not self._alive(known, now):
                return port

    def _purge(self, now: float) -> None:
        for key, binding in list(self._out.items()):
            if not self._alive(binding, now):
                self._drop(key, binding)

    def __len__(self) -> int:
        """Mappings held (live or not yet purged)."""
        return len(self._out)
