"""Rendezvous: client-mode nodes register with a few servers, which remember the mapping
they observe and forward connection offers to it.

Server side (:class:`Registrations`): a REGISTER from node X at address S records ``X → S``
(the source of the datagram, never anything X claims) for ``lease`` seconds. A node that
registers again (a keepalive, or after a restart: the same key gives the same id) updates
its entry and uses no new slot. Limits: ``max_registrations`` in all
(RESERVATION_REFUSED), ``max_registrations_per_ip`` distinct nodes per IP (IP_LIMIT), and
``serve_per_ip`` / ``serve_global`` requests per period (RATE_LIMITED); each refusal is
counted as ``rendezvous.refused.*``.

Client side (:class:`Registrar`): every ``keepalive`` seconds a client REGISTERs with the
``rendezvous`` servers closest to its own id (the nodes a lookup of its id finds), taken
from its routing table and from its last lookup of its own id. That lookup runs every
``announce_interval`` (core/traversal.py): nobody looks a client up, so its table learns
little of its neighbourhood after its join, and rendezvous picked in a small network would
stay while the network grows. When the lookup finds closer servers, the client registers
with them at once; the ones it leaves keep its entry until the lease runs out (they may
still introduce it meanwhile). The REGISTER is the keepalive that holds its NAT mapping
open. A server that stops answering is replaced at once by the next closest, and a change
of the address a server observes us at makes the client register again with all of them.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from .ids import NodeId
from .messages import Address, Contact, TraversalStatus
from .traversalconfig import TraversalConfig


class Quota:
    """Requests served per IP and in total per period (bounded memory)."""

    def __init__(self, config: TraversalConfig) -> None:
        self.config = config
        self._period_start = -float("inf")
        self._per_ip: OrderedDict[str, int] = OrderedDict()
        self._total = 0

    def admit(self, ip: str, now: float) -> bool:
        config = self.config
        if now - self._period_start >= config.serve_period:
            self._period_start, self._per_ip, self._total = now, OrderedDict(), 0
        count = self._per_ip.get(ip, 0)
        if count >= config.serve_per_ip or self._total >= config.serve_global:
            return False
        self._per_ip[ip] = count + 1
        self._per_ip.move_to_end(ip)
        if len(self._per_ip) > 4096:
            self._per_ip.popitem(last=False)
        self._total += 1
        return True


@dataclass(slots=True)
class Registration:
    address: Address
    expires: float


class Registrations:
    """The clients registered with this server, by node id."""

    def __init__(self, config: TraversalConfig, stats: Counter[str]) -> None:
        self.config = config
        self.stats = stats
        self._by_id: dict[NodeId, Registration] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def register(self, node_id: NodeId, address: Address, now: float) -> TraversalStatus:
        config = self.config
        entry = self._by_id.get(node_id)
        if entry is not None:
            if entry.address != address:
                self.stats["rendezvous.moved"] += 1
            entry.address, entry.expires = address, now + config.lease
            self.stats["rendezvous.renewed"] += 1
            return TraversalStatus.OK
        self.expire(now)
        if len(self._by_id) >= config.max_registrations:
            return self._refuse(TraversalStatus.RESERVATION_REFUSED)
        same_ip = sum(1 for r in self._by_id.values() if r.address[0] == address[0])
        if same_ip >= config.max_registrations_per_ip:
            return self._refuse(TraversalStatus.IP_LIMIT)
        self._by_id[node_id] = Registration(address, now + config.lease)
        self.stats["rendezvous.registered"] += 1
        return TraversalStatus.OK

    def _refuse(self, status: TraversalStatus) -> TraversalStatus:
        self.stats[f"rendezvous.refused.{status.name.lower()}"] += 1
        return status

    def address_of(self, node_id: NodeId, now: float) -> Address | None:
        entry = self._by_id.get(node_id)
        if entry is None or entry.expires < now:
            return None
        return entry.address

    def expire(self, now: float) -> None:
        for node_id in [n for n, r in self._by_id.items() if r.expires < now]:
            del self._by_id[node_id]
            self.stats["rendezvous.expired"] += 1


@dataclass(slots=True)
class Server:
    """One of our rendezvous, as the client sees it."""

    contact: Contact
    observed: Address | None = None
    """Where it saw us at its last answer (our mapping towards it)."""
    ok: bool = False
    """Whether its last answer registered us."""
    failures: int = 0
    waiting: bool = False


class Registrar:
    """A client's registrations: which servers, when to REGISTER again."""

    def __init__(self, config: TraversalConfig, stats: Counter[str]) -> None:
        self.config = config
        self.stats = stats
        self.servers: dict[NodeId, Server] = {}
        self.found: list[Contact] = []
        """The closest servers the last lookup of our own id found."""
        self.next_round = float("inf")
        self.active = False

    def start(self, now: float) -> None:
        if not self.active:
            self.active = True
            self.next_round = now

    def stop(self) -> None:
        self.active = False
        self.next_round = float("inf")
        self.servers.clear()
        self.found = []

    def candidates(self, own: NodeId, known: list[Contact]) -> list[Contact]:
        """The servers to choose from, closest to ``own`` first: ``known`` (our table's
        closest, whose addresses are the freshest) and those our last own-id lookup found."""
        merged = {c.node_id: c for c in known}
        for contact in self.found:
            merged.setdefault(contact.node_id, contact)
        ranked = sorted(merged.values(), key=lambda c: int(c.node_id ^ own))
        return ranked[: 4 * self.config.rendezvous]

    def announced(
        self, own: NodeId, found: list[Contact], known: list[Contact], now: float
    ) -> None:
        """A lookup of our own id found ``found``: when it brings servers closer than the
        ones we use, register with them now (the round picks them)."""
        self.found = [c for c in found if c.node_id != own][: 4 * self.config.rendezvous]
        self.stats["rendezvous.client.announces"] += 1
        best = {c.node_id for c in self.candidates(own, known)[: self.config.rendezvous]}
        if best - self.servers.keys():
            self.stats["rendezvous.client.repicked"] += 1
            self.next_round = now

    def due(self, closest: list[Contact], now: float) -> list[Contact]:
        """A round is due: the servers to REGISTER with now (the closest that have not
        failed twice in a row, topped up from the next closest)."""
        config = self.config
        self.next_round = now + config.keepalive

        # Servers that failed twice in a row go last: replaced by the next closest while
        # there are others, tried again when there are not (on a lossy path every server
        # fails now and then; none may be shut out for good).
        def failing(contact: Contact) -> bool:
            server = self.servers.get(contact.node_id)
            return server is not None and server.failures >= 2

        ranked = [c for c in closest if not failing(c)] + [c for c in closest if failing(c)]
        chosen = ranked[: config.rendezvous]
        keep = {c.node_id for c in chosen}
        for node_id in [n for n in self.servers if n not in keep]:
            if self.servers[node_id].failures < 2 or len(self.servers) > 4 * config.rendezvous:
                del self.servers[node_id]
        for contact in chosen:
            server = self.servers.setdefault(contact.node_id, Server(contact))
            server.contact = contact
            server.waiting = True
        self.stats["rendezvous.client.registers"] += len(chosen)
        return chosen

    def answered(
        self, node_id: NodeId, observed: Address, status: TraversalStatus, now: float
    ) -> None:
        server = self.servers.get(node_id)
        if server is None:
            return
        server.waiting = False
        server.ok = status is TraversalStatus.OK
        server.failures = 0 if server.ok else server.failures + 1
        if not server.ok:
            self.stats[f"rendezvous.client.refused.{status.name.lower()}"] += 1
            self.next_round = min(self.next_round, now + 1.0)
        if server.observed is not None and server.observed != observed:
            # Our mapping changed (a new external address, a NAT reboot): tell everyone now.
            self.stats["rendezvous.client.address_changed"] += 1
            self.next_round = now
        server.observed = observed

    def failed(self, node_id: NodeId, now: float) -> None:
        """A REGISTER timed out: replace the server soon."""
        server = self.servers.get(node_id)
        if server is None:
            return
        server.waiting = False
        server.ok = False
        server.failures += 1
        self.stats["rendezvous.client.timeouts"] += 1
        self.next_round = min(self.next_round, now + 1.0)

    def registered(self) -> list[Server]:
        return [s for s in self.servers.values() if s.ok]

    def own_ip(self) -> str | None:
        """Our public IP as our rendezvous see it (None before any answer)."""
        for server in self.servers.values():
            if server.observed is not None:
                return server.observed[0]
        return None
