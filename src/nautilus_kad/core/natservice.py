"""The reachability test inside a node: its own probe rounds, and the helper and prober
services it offers others (the protocol is in :mod:`.dialback`, the state in :mod:`.nat`).

The engine owns one :class:`NatService` and talks to it in four ways:

* :meth:`NatService.serve` for each DIALBACK, PROBE_RELAY or PROBE that arrives, with a
  ``reply`` callable that answers that very request (a helper answers a DIALBACK only once
  its prober answered the PROBE_RELAY, so the answer may come later);
* :meth:`NatService.observed` for the observed address in every answer to our requests, and
  :meth:`NatService.sent` for every datagram we send;
* :meth:`NatService.on_answer` / :meth:`NatService.on_timeout` for the outcome of the
  DIALBACK and PROBE_RELAY requests it sent (it is their owner);
* :meth:`NatService.run` when :meth:`NatService.timer` is due.

Upward it knows only the callables given at construction: send a request, send the PROBE
notice, list the servers of our routing table, tell whether a node is in it at an address,
and our own bound address. The PROBE is the one datagram sent to an address that never wrote
to us: the prober's rules (:class:`.dialback.Prober`) cap its bytes at those of the
PROBE_RELAY that caused it, which is why it goes out past the wire's amplification budget.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from typing import Any

from .messages import (
    Address,
    Contact,
    Dialback,
    DialbackReply,
    Message,
    NatRequest,
    Probe,
    ProbeRelay,
    ProbeRelayReply,
    ProbeStatus,
)
from .nat import NatState
from .reachability import Mode

Reply = Callable[[Message, float], None]
"""Answers the request being served (``reply(response, now)``)."""
SendRequest = Callable[[Address, Any, NatRequest, float, int], bytes]
"""``send_request(address, node_id, request, now, pad_to)``: the txid, or b"" when refused
(``pad_to``: pad a signed datagram to at least that many bytes)."""
SendNotice = Callable[[Address, Probe, float], None]

MAX_RELAYS = 64
"""DIALBACKs a helper holds while their probers answer (more are refused at once)."""


class NatService:
    """One node's side of the reachability test (all three roles)."""

    def __init__(
        self,
        nat: NatState,
        *,
        send_request: SendRequest,
        send_notice: SendNotice,
        servers: Callable[[], Sequence[Contact]],
        is_server: Callable[[Any, Address], bool],
        own_address: Callable[[], Address | None],
        answer_timeout: float,
        probe_size: int,
    ) -> None:
        self.nat = nat
        self._send_request = send_request
        self._send_notice = send_notice
        self._servers = servers
        self._is_server = is_server
        self._own_address = own_address
        self._answer_timeout = answer_timeout
        self._probe_size = probe_size
        self._relays: dict[bytes, tuple[Reply, Address]] = {}
        """Helper: the PROBE_RELAY txid -> how to answer the DIALBACK it serves."""
        self._copies: list[tuple[float, int, Address, bytes]] = []
        """Prober: later copies of probes, (when, seq, target, nonce)."""
        self._seq = 0

    @property
    def mode(self) -> Mode:
        return self.nat.mode

    # --- what the engine reports ---------------------------------------------------------

    def sent(self, ip: str, now: float) -> None:
        self.nat.sent_to(ip, now)

    def observed(self, observer: Address, seen: Address, now: float) -> None:
        self.nat.observed(observer, seen, now)

    # --- serving -------------------------------------------------------------------------

    def serve(
        self,
        request: NatRequest,
        sender: Any,
        address: Address,
        request_size: int,
        reply: Reply,
        now: float,
    ) -> None:
        """A reachability message from ``sender`` (a node id) at ``address``."""
        match request:
            case Probe(nonce=nonce):
                self.nat.probe_arrived(address, nonce, now)  # never answered
            case Dialback(nonce=nonce):
                self._serve_dialback(nonce, address, reply, now)
            case ProbeRelay(nonce=nonce, target=target):
                self._serve_relay(nonce, target, sender, address, request_size, reply, now)

    def _serve_dialback(self, nonce: bytes, requester: Address, reply: Reply, now: float) -> None:
        own = self._own_address()
        servers = self._servers()
        if len(self._relays) >= MAX_RELAYS:
            self.nat.helper.stats["dialback.refused.busy"] += 1
            reply(DialbackReply(requester, ProbeStatus.RATE_LIMITED), now)
            return
        decision = self.nat.serve_dialback(
            requester, [c.address for c in servers], own[0] if own else None, now
        )
        if decision.status is not ProbeStatus.ARRANGED or decision.prober is None:
            reply(DialbackReply(requester, decision.status), now)
            return
        prober = next(c for c in servers if c.address == decision.prober)
        # The PROBE_RELAY names the requester's observed address, nothing it said, and is
        # padded to pay for every copy of the probe it asks for.
        relay = ProbeRelay(nonce, requester)
        pad = self.nat.config.probe_copies * self._probe_size
        txid = self._send_request(prober.address, prober.node_id, relay, now, pad)
        if not txid:
            reply(DialbackReply(requester, ProbeStatus.FAILED), now)
            return
        self._relays[txid] = (reply, requester)

    def _serve_relay(
        self,
        nonce: bytes,
        target: Address,
        sender: Any,
        relayer: Address,
        request_size: int,
        reply: Reply,
        now: float,
    ) -> None:
        decision = self.nat.serve_relay(
            relayer,
            self._is_server(sender, relayer),
            target,
            self._own_address(),
            request_size,
            self._probe_size,
            now,
        )
        if decision.status is ProbeStatus.ARRANGED:
            self._send_notice(target, Probe(nonce), now)
            spacing = self.nat.config.probe_spacing
            for copy in range(1, decision.copies):
                self._seq += 1
                heapq.heappush(self._copies, (now + copy * spacing, self._seq, target, nonce))
        reply(ProbeRelayReply(relayer, decision.status), now)

    # --- outcomes of our own requests (we are their owner) -------------------------------

    def on_answer(self, request: Any, txid: bytes, message: Message, now: float) -> None:
        """The answer to a DIALBACK or PROBE_RELAY we sent."""
        if isinstance(request, Dialback) and isinstance(message, DialbackReply):
            self.nat.dialback_answered(request.nonce, message.status, now)
        elif isinstance(request, Dialback):  # an ERROR answer
            self.nat.dialback_answered(request.nonce, ProbeStatus.FAILED, now)
        elif isinstance(request, ProbeRelay):
            held = self._relays.pop(txid, None)
            if held is not None:
                status = (
                    message.status if isinstance(message, ProbeRelayReply) else ProbeStatus.FAILED
                )
                reply, requester = held
                reply(DialbackReply(requester, status), now)

    def on_timeout(self, request: Any, txid: bytes, now: float) -> None:
        """A DIALBACK or PROBE_RELAY we sent was never answered."""
        if isinstance(request, Dialback):
            self.nat.dialback_answered(request.nonce, ProbeStatus.FAILED, now)
        elif isinstance(request, ProbeRelay):
            held = self._relays.pop(txid, None)
            if held is not None:
                reply, requester = held
                reply(DialbackReply(requester, ProbeStatus.FAILED), now)

    # --- timers --------------------------------------------------------------------------

    def timer(self) -> float:
        if not self._copies:  # the usual case: asked after every datagram
            return self.nat.timer()
        return min(self.nat.timer(), self._copies[0][0])

    def run(self, now: float) -> None:
        """Send due probe copies, end due rounds, and start the rounds that are wanted."""
        copies = self._copies
        while copies and copies[0][0] <= now:
            _, _, target, nonce = heapq.heappop(copies)
            self._send_notice(target, Probe(nonce), now)
        nat = self.nat
        nat.handle_timer(now)
        wanted = nat.rounds_wanted(now)
        if not wanted:
            return
        # Few helpers, each asked up to its per-requester limit, the ones we talked to last
        # first (the same ones round after round): every IP we send to is one whose probes
        # prove nothing for a while, so asking many helpers would use up the probers a small
        # network has.
        in_flight: dict[Address, int] = {}
        for round_ in nat.rounds.rounds.values():
            in_flight[round_.helper] = in_flight.get(round_.helper, 0) + 1
        per_helper = nat.config.serve_per_requester
        candidates = [c for c in self._servers() if in_flight.get(c.address, 0) < per_helper]
        nat.rounds.rng.shuffle(candidates)
        last = nat.contacted.last
        candidates.sort(key=lambda c: -(last(c.host) or -math.inf))  # most recent first
        chosen: list[Contact] = []
        for contact in candidates:
            room = per_helper - in_flight.get(contact.address, 0)
            chosen.extend([contact] * min(room, wanted - len(chosen)))
            if len(chosen) == wanted:
                break
        if not chosen:
            nat.no_helpers(now)
            return
        asked = {c.address for c in chosen}
        if nat.hold_off([c.host for c in self._servers() if c.address not in asked], now):
            return
        for contact in chosen:
            nonce = nat.start_round(contact.address, now, self._answer_timeout)
            if not self._send_request(contact.address, contact.node_id, Dialback(nonce), now, 0):
                nat.dialback_answered(nonce, ProbeStatus.FAILED, now)
