"""The NAT layer's seat in the engine: it builds the node's :class:`~.nat.NatState` and
:class:`~.natservice.NatService` and connects them to the wire and the rpc layer.

The engine hands it four things and asks it one:

* :meth:`NatLink.serve` — a DIALBACK, PROBE_RELAY or PROBE arrived (a helper may answer a
  DIALBACK only later, once its prober answered);
* :meth:`NatLink.answered` — an answer to one of our requests carried the address its
  sender saw us at (a vote for our external address);
* :meth:`NatLink.sent` — datagrams we are sending (an IP we send to may have a hole in our
  NAT's filter for a while, so a probe from it would prove nothing);
* :meth:`NatLink.run` when :attr:`NatLink.deadline` is due;
* and :attr:`NatLink.is_client`, which it keeps in the context's flags.

What the NAT state learns (address, NAT class, mode) is logged at INFO; its counters are
part of the engine's metrics as ``nat.*``. See docs/nat.md for the protocol and its limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .codec import encode_message
from .context import FLAG_CLIENT, NodeContext
from .ids import NodeId
from .messages import Address, Envelope, Message, NatRequest, Probe
from .nat import ClassChange, NatState
from .natservice import NatService
from .pending import Pending
from .reachability import ModeChange
from .rpc import Queries, Requests
from .wire import Wire

_log = logging.getLogger("nautilus_kad.engine")


class _Owner:
    """The rpc owner of the DIALBACK and PROBE_RELAY requests the NAT service sends."""

    __slots__ = ("link",)

    def __init__(self, link: NatLink) -> None:
        self.link = link

    def on_answer(
        self, pending: Pending, contact: Any, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        link = self.link
        link.service.on_answer(pending.request, pending.txid, message, now)
        link.deadline = link.service.timer()

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        pass

    def on_timeout(self, pending: Pending, now: float) -> None:
        link = self.link
        link.service.on_timeout(pending.request, pending.txid, now)
        link.deadline = link.service.timer()


class NatLink:
    """One node's reachability test, wired to its wire and rpc layer."""

    def __init__(
        self,
        ctx: NodeContext,
        wire: Wire,
        requests: Requests,
        queries: Queries,
        now: float,
        *,
        client_mode: bool,
        verified: Callable[[NodeId, Address, float], bool],
    ) -> None:
        self._ctx = ctx
        self._wire = wire
        self._requests = requests
        self._queries = queries
        self._verified = verified
        config = ctx.config
        mode = "client" if client_mode else config.mode
        self.nat = NatState(config.nat, ctx.rng, now, mode=mode)
        self.auto = self.nat.tracker.fixed is None
        self._owner: int | None = None
        self._now = now
        self.service = NatService(
            self.nat,
            send_request=self._request,
            send_notice=self._notice,
            servers=lambda: list(ctx.table),
            is_server=self._in_table_at,
            own_address=lambda: ctx.address,
            answer_timeout=2 * config.request_timeout,
            probe_size=len(encode_message(Probe(bytes(8)), bytes(8), ctx.auth, FLAG_CLIENT)),
        )
        if self.nat.is_client:
            ctx.flags |= FLAG_CLIENT
        self.deadline = self.service.timer()
        """The NAT layer's next deadline, kept current by every entry point that can move
        it (:meth:`sync` and the rpc owner's outcomes): the engine asks for its timer after
        every datagram, and this makes that one attribute read. ``sent`` and ``received``
        only date the holes in our NAT, which no deadline depends on."""

    @property
    def is_client(self) -> bool:
        return self.nat.is_client

    # --- what the engine reports ---------------------------------------------------------

    def serve(
        self, envelope: Envelope, request: NatRequest, address: Address, now: float, size: int
    ) -> None:
        self._now = now
        sender = envelope.sender_id
        ctx = self._ctx
        ctx.stats[f"rx.request.{request.TYPE.name}"] += 1
        verified = envelope.session is not None or self._verified(sender, address, now)
        if not verified:
            self._wire.budget.received(address, size)
        wire = self._wire

        def reply(response: Message, at: float) -> None:
            wire.respond(envelope, response, address, at, size, verified)

        self.service.serve(request, sender, address, size, reply, now)
        self.sync(now)

    def answered(self, observer: Address, observed: Address, now: float) -> None:
        """``observer`` answered our request (it echoed our random txid) and saw us at
        ``observed``: its word is a vote."""
        self._now = now
        self.nat.local = self._ctx.address  # tells a public node from a cone NAT
        self.nat.observed(observer, observed, now)  # what NatService.observed does
        if self.nat.changes:
            self.sync(now)

    def sent(self, out: list[tuple[bytes, Address]]) -> None:
        if self.auto:
            # Dated by the latest time anything was framed: commands (a put, a lookup) send
            # without passing through here, and a stale date would let a hole our own
            # traffic opened pass for proof.
            sent_to, now = self.nat.sent_to, max(self._now, self._wire.now)
            for _, address in out:
                sent_to(address[0], now)

    def received(self, address: Address, now: float) -> None:
        """A datagram came from ``address`` (valid or not: our NAT let it in either way)."""
        if self.auto:
            self.nat.received_from(address[0], now)

    def timer(self) -> float:
        return self.deadline

    def run(self, now: float) -> None:
        self._now = now
        self.service.run(now)
        self.sync(now)

    def nat_class(self) -> str:
        """Our NAT class in our address family (``public``, ``endpoint-independent`` …)."""
        return self.nat.classes[self.nat.family].value

    def external(self) -> Address | None:
        """Our adopted external address in our family (None while not agreed on)."""
        return self.nat.voters[self.nat.family].address

    def reachability(self, now: float) -> dict[str, object]:
        return self.nat.snapshot(now)

    # --- what the service asks -----------------------------------------------------------

    def _request(
        self, address: Address, node_id: NodeId | None, request: NatRequest, now: float, pad: int
    ) -> bytes:
        qid = self._owner
        if qid is None:  # made on first use: a node that never probes keeps its query ids
            qid = self._owner = self._queries.new_id()
            self._queries[qid] = _Owner(self)
        return self._requests.send(address, node_id, request, now, qid, pad)

    def _notice(self, address: Address, probe: Probe, now: float) -> None:
        """The PROBE: signed, never answered, and sent past the amplification budget: the
        prober's rules already capped it at the bytes of the PROBE_RELAY that asked for it."""
        ctx = self._ctx
        data = encode_message(probe, ctx.rng.randbytes(8), ctx.auth, ctx.flags)
        ctx.stats["tx.probe"] += 1
        self._wire.queue(data, address)

    def _in_table_at(self, node_id: NodeId, address: Address) -> bool:
        entry = self._ctx.table.get(node_id)
        return entry is not None and entry.contact.address == address

    # --- what changed --------------------------------------------------------------------

    def sync(self, now: float) -> None:
        """Log what the NAT state learnt and carry the mode into our flags."""
        changes = self.nat.changes
        while changes:
            change = changes.popleft()
            if isinstance(change, ModeChange):
                _log.info("reachability: now a %s (%s)", change.new.value, change.reason)
            elif isinstance(change, ClassChange):
                _log.info("reachability: IPv%d NAT %s", change.family, change.new.value)
            else:
                shown = change.new_address or change.new_ip
                _log.info("reachability: IPv%d external address %s", change.family, shown)
        ctx = self._ctx
        ctx.flags = ctx.flags | FLAG_CLIENT if self.nat.is_client else ctx.flags & ~FLAG_CLIENT
        self.deadline = self.service.timer()

    def counters(self) -> dict[str, int]:
        """The NAT counters, as ``nat.*`` (votes, probes sent / answered / refused, mode
        changes …): part of the engine's metrics, hence of ``node.stats``."""
        return {"nat." + key: value for key, value in self.nat.stats().items()}
