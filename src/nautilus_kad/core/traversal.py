"""NAT traversal's seat in the engine: rendezvous, relay, connects and channels, wired to
the wire and the rpc layer (as core/natlink.py wires the reachability test).

The engine hands it:

* :meth:`Traversal.serve` — a REGISTER, CONNECT or FORWARD arrived;
* :meth:`Traversal.datagram` — a channel, relayed or circuit-release datagram arrived
  (``0xC1`` followed by 0x03, 0x04 or 0x05: see :data:`CHANNEL_KINDS`);
* :meth:`Traversal.run` when :meth:`Traversal.timer` is due.

Its commands (:meth:`connect`, :meth:`send`, :meth:`close`) are what the driver's
``Node.connect`` and channels use; :attr:`Traversal.enabled` switches the client's
rendezvous registrations on (drivers do; the simulator only where a scenario asks).
Counters: ``rendezvous.*``, ``relay.*``, ``connect.*``, ``channel.*`` and ``nat.punch.*``
in the engine's stats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .channel import KIND_CHANNEL, KIND_RELAYED, KIND_RELEASE
from .channels import Channels
from .connector import Connector, Policy
from .context import NodeContext
from .ids import NodeId
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import (
    Address,
    Connect,
    ConnectReply,
    Contact,
    Envelope,
    Error,
    Forward,
    ForwardReply,
    Message,
    Register,
    RegisterReply,
    TraversalRequest,
    TraversalStatus,
)
from .pending import Pending
from .relay import Circuit, Relay
from .rendezvous import Quota, Registrar, Registrations
from .rpc import Queries, Requests
from .wire import Wire

CHANNEL_KINDS = frozenset({KIND_CHANNEL, KIND_RELAYED, KIND_RELEASE})
TRAVERSAL_REQUESTS = frozenset({Register, Connect, Forward})
Reply = Callable[[Message, float], None]


class _Owner:
    """The rpc owner of the REGISTER, CONNECT and FORWARD requests we send."""

    __slots__ = ("link",)

    def __init__(self, link: Traversal) -> None:
        self.link = link

    def on_answer(
        self, pending: Pending, contact: Any, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        self.link.answered(pending, message, now)

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        pass

    def on_timeout(self, pending: Pending, now: float) -> None:
        self.link.timed_out(pending, now)


class Traversal:
    """One node's NAT traversal."""

    def __init__(
        self,
        ctx: NodeContext,
        wire: Wire,
        requests: Requests,
        queries: Queries,
        lookups: Lookups,
        *,
        is_client: Callable[[], bool],
        nat_class: Callable[[], str],
        external: Callable[[], Address | None],
    ) -> None:
        self._ctx = ctx
        self._wire = wire
        self._requests = requests
        self._queries = queries
        self._lookups = lookups
        self._is_client = is_client
        self._nat_class = nat_class
        self._external = external
        self.config = config = ctx.config.traversal
        self.stats = ctx.stats
        self.channels = Channels(ctx, self._queue_channel)
        self.connector = Connector(ctx, self.channels, lookups, self._send_connect, wire.queue,
                                   self._own)  # fmt: skip
        self.registrar = Registrar(config, ctx.stats)
        self.registrations = Registrations(config, ctx.stats)
        self.relay = Relay(config, ctx.rng, ctx.stats)
        self.quota = Quota(config)
        self._forwards: dict[
            bytes, tuple[Reply, Address, Address, Circuit | None, TraversalStatus]
        ] = {}
        self._circuit_of: dict[tuple[Address, bytes], Circuit] = {}
        self._owner: int | None = None
        self.enabled = False
        """Whether a client registers with rendezvous (drivers switch it on)."""
        self._next_check = math.inf
        self._next_announce = math.inf
        """When a registered client next looks up its own id (re-picks its rendezvous)."""

    # --- commands ------------------------------------------------------------------------

    @property
    def policy(self) -> Policy | None:
        return self.connector.policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self.connector.policy = policy

    def enable(self, now: float) -> None:
        self.enabled = True
        self._next_check = now

    def connect(self, target: NodeId, now: float, timeout: float) -> int:
        """Open a channel to ``target``: ends with ChannelOpened or ConnectFailed."""
        qid = self._queries.new_id()
        self.connector.connect(target, qid, now, timeout)
        return qid

    def send(self, handle: int, data: bytes, now: float) -> str | None:
        return self.channels.send(handle, data, now)

    def close(self, handle: int, now: float) -> None:
        channel = self.channels.get(handle)
        if channel is not None:
            self.channels.close(channel, "closed", now)

    # --- what the engine reports ---------------------------------------------------------

    def serve(
        self, envelope: Envelope, request: TraversalRequest, address: Address, now: float,
        size: int,
    ) -> None:  # fmt: skip
        ctx = self._ctx
        ctx.stats[f"rx.request.{request.TYPE.name}"] += 1
        wire = self._wire
        verified = envelope.session is not None or wire.address_verified(
            envelope.sender_id, address, now
        )
        if not verified:
            wire.budget.received(address, size)

        def reply(response: Message, at: float) -> None:
            wire.respond(envelope, response, address, at, size, verified)

        lease = int(self.config.lease)
        if not self.quota.admit(address[0], now):
            self.stats["rendezvous.refused.rate_limited"] += 1
            limited = TraversalStatus.RATE_LIMITED
            refusal: Message
            if isinstance(request, Register):
                refusal = RegisterReply(address, limited, 0)
            elif isinstance(request, Forward):
                refusal = ForwardReply(address, limited, b"")
            else:
                refusal = ConnectReply(address, limited, b"", None, 0, TraversalStatus.NO_RELAY)
            reply(refusal, now)
            return
        if isinstance(request, Forward):  # we are the target, the sender our rendezvous
            status, answer = self.connector.accept(
                request.offer, request.source, address, request.circuit, now
            )
            reply(ForwardReply(address, status, answer), now)
            return
        if isinstance(request, Register):
            if self._is_client():
                status = TraversalStatus.NOT_SERVER
            else:
                status = self.registrations.register(envelope.sender_id, address, now)
            reply(RegisterReply(address, status, lease if status is TraversalStatus.OK else 0), now)
            return
        if request.target == ctx.node_id:  # a CONNECT to us, a server
            status, answer = self.connector.accept(request.offer, address, None, 0, now)
            reply(ConnectReply(address, status, answer, None, 0, TraversalStatus.NO_RELAY), now)
            return
        self._introduce(request, envelope.sender_id, address, reply, now)

    def _introduce(
        self, request: Connect, sender: NodeId, address: Address, reply: Reply, now: float
    ) -> None:
        """As a rendezvous: forward the offer to the target's observed mapping."""
        target = None if self._is_client() else self.registrations.address_of(request.target, now)
        if target is None:
            self.stats["rendezvous.connect.not_found"] += 1
            reply(ConnectReply(address, TraversalStatus.NOT_FOUND, b"", None, 0,
                               TraversalStatus.NO_RELAY), now)  # fmt: skip
            return
        circuit = None
        relay_status = TraversalStatus.NO_RELAY
        if request.relay:
            # The initiator sends its CONNECT again on a lossy path: the same offer from the
            # same address gets the same circuit, not another one.
            key = (address, request.offer)
            circuit = self._circuit_of.get(key)
            if circuit is not None and self.relay.is_open(circuit):
                relay_status = TraversalStatus.OK
            else:
                relay_status, circuit = self.relay.open(address, target, int(request.target), now)
                if circuit is not None:
                    self._circuit_of[key] = circuit
                    if len(self._circuit_of) > 256:
                        del self._circuit_of[next(iter(self._circuit_of))]
        forward = Forward(request.offer, address, circuit.b_id if circuit is not None else 0)
        txid = self._request(target, request.target, forward, now)
        if not txid:
            if circuit is not None:
                self.relay.close(circuit, "unsent")
            reply(ConnectReply(address, TraversalStatus.NO_ANSWER, b"", None, 0,
                               TraversalStatus.NO_RELAY), now)  # fmt: skip
            return
        self.stats["rendezvous.connect.forwarded"] += 1
        self._forwards[txid] = (reply, address, target, circuit, relay_status)

    def answered(self, pending: Pending, message: Message, now: float) -> None:
        request = pending.request
        if isinstance(message, Error):
            self.timed_out(pending, now)
        elif isinstance(message, RegisterReply) and pending.node_id is not None:
            self.registrar.answered(pending.node_id, message.observed, message.status, now)
        elif isinstance(message, ConnectReply):
            self.connector.on_reply(pending.txid, pending.address, message, now)
        elif isinstance(message, ForwardReply) and isinstance(request, Forward):
            forward = self._forwards.pop(pending.txid, None)
            if forward is None:
                return
            reply, source, target, circuit, relay_status = forward
            ok = message.status is TraversalStatus.OK
            # A circuit that goes unused expires after circuit_idle: a repeated CONNECT
            # (lossy path) may share it with one that succeeded, so it is never closed here.
            cid = circuit.a_id if circuit is not None and ok else 0
            answer = ConnectReply(source, message.status, message.answer if ok else b"",
                                  target, cid, relay_status)  # fmt: skip
            reply(answer, now)

    def timed_out(self, pending: Pending, now: float) -> None:
        request = pending.request
        if isinstance(request, Register) and pending.node_id is not None:
            self.registrar.failed(pending.node_id, now)
        elif isinstance(request, Connect):
            self.connector.on_timeout(pending.txid, now)
        elif isinstance(request, Forward):
            forward = self._forwards.pop(pending.txid, None)
            if forward is not None:
                reply, source, _, _, _ = forward
                self.stats["rendezvous.connect.no_answer"] += 1
                reply(ConnectReply(source, TraversalStatus.NO_ANSWER, b"", None, 0,
                                   TraversalStatus.NO_RELAY), now)  # fmt: skip

    def datagram(self, data: bytes, address: Address, now: float) -> None:
        """A channel, relayed or release datagram (``data[1]`` in :data:`CHANNEL_KINDS`)."""
        stats = self.stats
        stats["rx.datagrams"] += 1
        stats["rx.bytes"] += len(data)
        # The source IP's token bucket first, as for every other datagram: a flood of channel
        # or relayed datagrams costs one lookup each, not a circuit or AEAD check. What we
        # send a peer pays for its answers in advance (_queue_channel), so a channel that
        # talks both ways is not throttled by its own traffic.
        refused = self._wire.ingress.admit(address[0], now)
        if refused is not None:
            stats["rx.dropped"] += 1
            stats[f"rx.dropped.{refused}"] += 1
            stats["channel.rx.dropped"] += 1
            stats[f"channel.rx.dropped.{refused}"] += 1
            return
        kind = data[1]
        if kind == KIND_RELEASE:
            if not self.channels.relay_ended(data, address, now):
                self.relay.release(data, address)
            return
        if kind == KIND_RELAYED and self.relay.knows(data):
            for forwarded in self.relay.forward(data, address, now):
                self._queue_channel(*forwarded)
            return
        self.channels.datagram(data, address, now)

    # --- timers --------------------------------------------------------------------------

    def timer(self) -> float:
        # Asked after every datagram: the connector is skipped while it has no attempt.
        # (compared one by one: builtin min() costs more than the comparison)
        due = self.channels.timer()
        if (t := self._next_check) < due:
            due = t
        if self.connector.attempts:
            due = min(due, self.connector.timer())
        if self.registrar.active:
            due = min(due, self.registrar.next_round, self._next_announce)
        return due

    def run(self, now: float) -> None:
        self.connector.run(now)
        self.channels.run(now)
        if now >= self._next_check:
            self._next_check = now + self.config.keepalive
            if self.enabled and self.config.rendezvous and self._is_client():
                if not self.registrar.active:
                    self.registrar.start(now)
                    # The first re-pick soon, not at once: a node that just joined knows its
                    # neighbourhood, and clients switched on together spread their lookups.
                    spread = min(self.config.keepalive, self.config.announce_interval)
                    self._next_announce = now + self._ctx.rng.uniform(0.25, 1.0) * spread
            elif self.registrar.active:
                self.registrar.stop()
                self._next_announce = math.inf
            self.registrations.expire(now)
            self.relay.expire(now)
        registrar = self.registrar
        own = self._ctx.node_id
        if registrar.active and now >= self._next_announce:
            self._next_announce = now + self.config.announce_interval
            self.stats["rendezvous.client.lookups"] += 1
            self._lookups.start(own, now, want_value=False, on_done=self._announced)
        if registrar.active and now >= registrar.next_round:
            # Stale entries too: a REGISTER is itself the liveness check, and on a lossy path
            # skipping them would stop the keepalives that could have refreshed them.
            closest = registrar.candidates(own, self._known())
            for contact in registrar.due(closest, now):
                self._request(contact.address, contact.node_id, Register(), now)
            if not closest:
                registrar.next_round = now + min(0.5, self.config.keepalive)

    def _announced(self, query: LookupQuery, closest: list[Candidate], now: float) -> None:
        """Our own-id lookup ended: re-pick our rendezvous from what it found."""
        if self.registrar.active:
            found = [c.contact for c in closest]
            self.registrar.announced(self._ctx.node_id, found, self._known(), now)

    # --- helpers -------------------------------------------------------------------------

    def _queue_channel(self, data: bytes, address: Address) -> None:
        """Send a channel or relayed datagram; its answer is paid for at the receiver's
        rate limit (one token, as for our requests)."""
        self._wire.ingress.expect(address[0])
        self._wire.queue(data, address)

    def _known(self) -> list[Contact]:
        """Our table's closest to our own id (rendezvous candidates)."""
        return list(self._ctx.table.closest(self._ctx.node_id, 4 * self.config.rendezvous))

    def _request(
        self, address: Address, node_id: NodeId | None, request: TraversalRequest, now: float
    ) -> bytes:
        qid = self._owner
        if qid is None:
            qid = self._owner = self._queries.new_id()
            self._queries[qid] = _Owner(self)
        return self._requests.send(address, node_id, request, now, qid)

    def _send_connect(
        self, address: Address, node_id: NodeId | None, request: Connect, now: float
    ) -> bytes:
        return self._request(address, node_id, request, now)

    def _own(self) -> tuple[str, str | None, list[Address]]:
        """Our NAT class, our public IP and the addresses we sign for ourselves: where our
        rendezvous see us, our external address, our bound (LAN) address."""
        ctx = self._ctx
        addresses: list[Address] = []
        for server in self.registrar.servers.values():
            if server.observed is not None and server.observed not in addresses:
                addresses.append(server.observed)
        for address in (ctx.observed_address, self._external(), ctx.address):
            if address is not None and address not in addresses and address[0] not in (
                "0.0.0.0", "::"
            ):  # fmt: skip
                addresses.append(address)
        public = self.registrar.own_ip() or (
            ctx.observed_address[0] if ctx.observed_address is not None else None
        )
        return self._nat_class(), public, addresses[:4]

    def snapshot(self) -> dict[str, object]:
        """For ``node.reachability``: our rendezvous and what we hold as one."""
        return {
            "rendezvous": [
                {
                    "id": s.contact.node_id.hex(),
                    "address": s.contact.address,
                    "ok": s.ok,
                    "observed": s.observed,
                }
                for s in self.registrar.servers.values()
            ],
            "registrations": len(self.registrations),
            "circuits": len(self.relay),
            "channels": len(self.channels),
        }
