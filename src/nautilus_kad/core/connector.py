"""Connect: find the target, exchange sealed offer and answer, then punch (or relay).

Initiator side (:meth:`Connector.connect`): look the target up. If it is a server (it
answered the lookup), send it a CONNECT directly; otherwise send CONNECTs (asking for a
relay circuit too) to the ``connect_fanout`` nodes closest to it, its likely rendezvous,
and to further ones as those answer NOT_FOUND, up to ``connect_tries``. The first verified
answer creates the channel (core/channels.py); circuits granted by later answers are
released at once. Every connect ends with :class:`~.events.ChannelOpened` or
:class:`~.events.ConnectFailed` by its deadline.

Target side (:meth:`Connector.accept`): verify the offer (signed by its sender, meant for
us, dated within ``offer_max_age``, never seen), ask the allow/deny hook, answer with our
sealed answer and start punching the offer's addresses that pass
:func:`~.introduction.punchable`. The same offer arriving through several rendezvous gets
the same answer (the first one's channel).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .channel import Channel, release
from .channels import Channels
from .context import NodeContext
from .errors import DecodeError
from .events import ConnectFailed
from .ids import NodeId
from .introduction import ANSWER, NONCE_BYTES, OFFER, channel_keys, open_sealed, punchable, seal
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import Address, Connect, ConnectReply, Contact, TraversalStatus

SendRequest = Callable[[Address, NodeId | None, Connect, float], bytes]
Policy = Callable[[bytes, Address], bool]
_FAILURE_CODES = {
    TraversalStatus.REFUSED: "refused",
    TraversalStatus.RATE_LIMITED: "rate_limited",
    TraversalStatus.RESOURCE_LIMIT: "limit",
    TraversalStatus.NO_ANSWER: "no_answer",
    TraversalStatus.BAD_OFFER: "bad_offer",
    TraversalStatus.NOT_SERVER: "not_found",
    TraversalStatus.NOT_FOUND: "not_found",
}


@dataclass(slots=True, eq=False)
class Attempt:
    query_id: int
    target: NodeId
    deadline: float
    nonce: bytes
    private: Any
    public: bytes
    handle: int
    offer: bytes = b""
    candidates: list[Contact] = field(default_factory=list)
    asked: int = 0
    waiting: set[bytes] = field(default_factory=set)
    silent: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Candidate index → (when we last sent it a CONNECT, retries left) while it has not
    answered: on a lossy path the CONNECT or its FORWARD is sent again."""
    by_txid: dict[bytes, int] = field(default_factory=dict)
    codes: list[str] = field(default_factory=list)
    channel: Channel | None = None
    looking: bool = False
    """The lookup of the target is still running (no failure before it ends)."""


class Connector:
    """Connect attempts of one node (initiator side) and offers it accepted (target side)."""

    def __init__(
        self,
        ctx: NodeContext,
        channels: Channels,
        lookups: Lookups,
        send_request: SendRequest,
        queue: Callable[[bytes, Address], None],
        own: Callable[[], tuple[str, str | None, list[Address]]],
    ) -> None:
        self._ctx = ctx
        self.config = ctx.config.traversal
        self.channels = channels
        self._lookups = lookups
        self._send_request = send_request
        self._queue = queue
        self._own = own
        """(our NAT class, our public IP, the addresses we sign for ourselves)."""
        self.policy: Policy | None = None
        self.attempts: dict[int, Attempt] = {}
        self._by_txid: dict[bytes, Attempt] = {}
        self._renewals: dict[bytes, Channel] = {}
        """CONNECTs asking for a new circuit for an open channel, by txid."""
        channels.renew = self.renew
        self._accepted: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        """Offer nonce → (our answer, channel handle): replays and repeats through another
        rendezvous get the same answer and no second channel."""
        self.stats = ctx.stats

    # --- initiator -----------------------------------------------------------------------

    def connect(self, target: NodeId, query_id: int, now: float, timeout: float) -> None:
        ctx = self._ctx
        if target == ctx.node_id:
            self._fail_now(query_id, "bad_target", "cannot connect to ourselves")
            return
        if len(self.channels) >= self.config.max_channels:
            self._fail_now(query_id, "limit", "too many channels")
            return
        private, public = ctx.auth.new_ephemeral(ctx.rng)
        attempt = Attempt(
            query_id, target, now + timeout, ctx.rng.randbytes(NONCE_BYTES), private, public,
            self.channels.new_handle(),
        )  # fmt: skip
        nat_class, _, addresses = self._own()
        attempt.offer = seal(
            ctx.auth, OFFER, target, attempt.nonce, now, public, attempt.handle, nat_class,
            addresses,
        )  # fmt: skip
        self.attempts[query_id] = attempt
        self.stats["connect.started"] += 1
        entry = ctx.table.get(target)
        if entry is not None:
            self._direct(attempt, entry.contact, now)
            return
        # Ask the closest we already know at once, while the lookup runs: in a small network
        # (or a well-filled table) they are the target's rendezvous, and a lossy path then
        # pays for one introduction, not for a lookup first.
        attempt.looking = True
        attempt.candidates = ctx.table.closest(target, self.config.connect_fanout)
        for _ in attempt.candidates:
            self._ask_next(attempt, now)
        self._lookups.start(
            target, now, want_value=False,
            on_done=lambda query, closest, at: self._found(attempt, query, closest, at),
        )  # fmt: skip

    def _found(
        self, attempt: Attempt, query: LookupQuery, closest: list[Candidate], now: float
    ) -> None:
        attempt.looking = False
        if self.attempts.get(attempt.query_id) is not attempt:
            return
        contacts = [c.contact for c in closest]
        if len(contacts) < self.config.connect_tries:
            # On a lossy path a lookup may end with few answers: our own table's closest
            # to the target are candidates too.
            known = {c.node_id for c in contacts}
            for contact in self._ctx.table.closest(attempt.target, self.config.connect_tries):
                if contact.node_id not in known:
                    contacts.append(contact)
            contacts.sort(key=lambda c: int(c.node_id ^ attempt.target))
        for contact in contacts:
            if contact.node_id == attempt.target:
                self._direct(attempt, contact, now)
                return
        known = {c.node_id for c in attempt.candidates}
        fresh = [c for c in contacts if c.node_id not in known]
        attempt.candidates.extend(fresh[: max(0, self.config.connect_tries - len(known))])
        if not attempt.candidates:
            self._finish_failed(attempt, "not_found", "the lookup found no node")
            return
        for _ in range(max(0, self.config.connect_fanout - len(attempt.silent))):
            self._ask_next(attempt, now)
        if not attempt.waiting:
            self._next_or_fail(attempt, now)

    def _direct(self, attempt: Attempt, contact: Contact, now: float) -> None:
        attempt.candidates.insert(attempt.asked, contact)  # asked next: indices before stay
        self._ask_next(attempt, now)

    def _ask_next(self, attempt: Attempt, now: float) -> None:
        if attempt.asked >= len(attempt.candidates):
            return
        index = attempt.asked
        attempt.asked += 1
        attempt.silent[index] = (now, self.config.connect_retries)
        self._send(attempt, index, now)

    def _send(self, attempt: Attempt, index: int, now: float) -> None:
        contact = attempt.candidates[index]
        is_target = contact.node_id == attempt.target
        request = Connect(attempt.target, attempt.offer, not is_target)
        txid = self._send_request(contact.address, contact.node_id, request, now)
        if txid:
            attempt.waiting.add(txid)
            attempt.by_txid[txid] = index
            self._by_txid[txid] = attempt
        else:
            attempt.codes.append("overloaded")
        self.stats["connect.asked"] += 1

    def on_reply(self, txid: bytes, sender: Address, reply: ConnectReply, now: float) -> None:
        renewing = self._renewals.pop(txid, None)
        if renewing is not None:
            self._renewed(renewing, sender, reply, now)
            return
        attempt = self._by_txid.pop(txid, None)
        if attempt is None:
            return
        attempt.waiting.discard(txid)
        attempt.silent.pop(attempt.by_txid.get(txid, -1), None)
        if reply.status is not TraversalStatus.OK:
            self.stats[f"connect.status.{reply.status.name.lower()}"] += 1
            code = _FAILURE_CODES.get(reply.status, "not_found")
            attempt.codes.append(code)
            if reply.status is TraversalStatus.REFUSED and attempt.channel is None:
                self._finish_failed(attempt, "refused", "the target refused the connection")
                return
            self._next_or_fail(attempt, now)
            return
        if attempt.channel is not None or self.attempts.get(attempt.query_id) is not attempt:
            # A later answer: another rendezvous's circuit is not needed. (A repeated CONNECT
            # to the same rendezvous got the circuit the channel uses: that one stays.)
            channel = attempt.channel
            ours = channel is not None and (sender, reply.circuit) in channel.relays
            if reply.circuit and not ours:
                self._queue(release(reply.circuit), sender)
            return
        try:
            answer = open_sealed(self._ctx.auth, reply.answer, ANSWER)
        except DecodeError:
            answer = None
        if (
            answer is None
            or answer.peer_id != attempt.target
            or answer.other != self._ctx.node_id
            or answer.nonce != attempt.nonce
        ):
            self.stats["connect.bad_answer"] += 1
            attempt.codes.append("bad_answer")
            self._next_or_fail(attempt, now)
            return
        shared = self._ctx.auth.agree(attempt.private, answer.ephemeral)
        if shared is None:
            attempt.codes.append("bad_answer")
            self._next_or_fail(attempt, now)
            return
        send_key, recv_key = channel_keys(
            shared, self._ctx.node_id, attempt.target, attempt.public, answer.ephemeral,
            attempt.nonce,
        )  # fmt: skip
        channel = Channel(
            attempt.handle, attempt.target, answer.channel, send_key, recv_key,
            initiator=True, query_id=attempt.query_id, now=now,
        )  # fmt: skip
        nat_class, _, _ = self._own()
        channel.pair = f"{nat_class}-{answer.nat_class}"
        channel.deadline = attempt.deadline
        if reply.peer is None:  # the target answered itself: it is where we reached it
            channel.candidates = [sender]
        else:
            channel.candidates = punchable(answer.addresses, reply.peer[0], reply.observed[0])
            if reply.circuit:
                channel.relay, channel.circuit = sender, reply.circuit
                channel.relays.add((sender, reply.circuit))
                index = attempt.by_txid.get(txid, -1)
                rendezvous = attempt.candidates[index].node_id if index >= 0 else None
                channel.renewal = (sender, rendezvous, attempt.nonce, attempt.public,
                                   reply.answer)  # fmt: skip
                channel.renewals_left = self.config.relay_renewals
        attempt.channel = channel
        self._start(channel, answer.nat_class, now)
        self.channels.add(channel, now)
        del self.attempts[attempt.query_id]  # later answers only get their circuits released
        self.stats["connect.answered"] += 1

    def _start(self, channel: Channel, peer_class: str, now: float) -> None:
        """Punch, or go to the relay at once where punching cannot work (relay only, both
        NATs endpoint-dependent, or nothing to punch)."""
        config = self.config
        hopeless = self._own()[0] == peer_class == "endpoint-dependent"
        skip = channel.relay is not None and (
            config.relay_only or hopeless or not channel.candidates
        )
        if channel.relay is not None:
            channel.relay_at = now if skip else now + config.relay_after
        if skip:
            channel.may_punch = False
            self.stats["nat.punch.skipped"] += 1
            return
        channel.punch(config.punch_rounds, now)

    def renew(self, channel: Channel, now: float) -> bool:
        """The relay ended the circuit of ``channel`` (ours, relayed, no direct path): ask
        the rendezvous that granted it for a new one, with a re-dated copy of the offer
        (same nonce and key: the target knows it and answers with the same answer, adding
        the new circuit to the channel). True if asked."""
        renewal = channel.renewal
        if renewal is None or channel.renewals_left <= 0:
            return False
        rendezvous, rendezvous_id, nonce, public, _ = renewal
        channel.renewals_left -= 1
        ctx = self._ctx
        nat_class, _, addresses = self._own()
        offer = seal(
            ctx.auth, OFFER, channel.peer_id, nonce, now, public, channel.handle, nat_class,
            addresses,
        )  # fmt: skip
        txid = self._send_request(rendezvous, rendezvous_id, Connect(channel.peer_id, offer, True),
                                  now)  # fmt: skip
        if not txid:
            return False
        self._renewals[txid] = channel
        self.stats["channel.relay.renewals"] += 1
        return True

    def _renewed(self, channel: Channel, sender: Address, reply: ConnectReply, now: float) -> None:
        renewal = channel.renewal
        usable = (
            self.channels.get(channel.handle) is channel
            and channel.direct is None
            and channel.relay is None
            and renewal is not None
            and reply.status is TraversalStatus.OK
            and reply.circuit != 0
            and reply.answer == renewal[4]  # the same target and channel, not a new one
        )
        if not usable:
            self.stats[f"channel.relay.renew_failed.{reply.status.name.lower()}"] += 1
            if reply.circuit:
                self._queue(release(reply.circuit), sender)
            return
        self.channels.relayed_again(channel, sender, reply.circuit, now)

    def on_timeout(self, txid: bytes, now: float) -> None:
        if self._renewals.pop(txid, None) is not None:
            self.stats["channel.relay.renew_failed.no_answer"] += 1
            return  # the channel's rescue window closes it
        attempt = self._by_txid.pop(txid, None)
        if attempt is None:
            return
        attempt.waiting.discard(txid)
        if attempt.waiting and attempt.by_txid.get(txid) in attempt.silent:
            return  # a retry to the same candidate is still on its way
        attempt.codes.append("no_answer")
        self.stats["connect.timeouts"] += 1
        self._next_or_fail(attempt, now)

    def _next_or_fail(self, attempt: Attempt, now: float) -> None:
        if self.attempts.get(attempt.query_id) is not attempt:
            return
        self._ask_next(attempt, now)
        if not attempt.waiting and not attempt.looking:
            codes = attempt.codes
            for code in ("refused", "rate_limited", "limit", "bad_answer", "no_answer"):
                if code in codes:
                    break
            else:
                code = "not_found"
            self._finish_failed(attempt, code, f"no rendezvous introduced us ({', '.join(codes)})")

    def _finish_failed(self, attempt: Attempt, code: str, reason: str) -> None:
        self.attempts.pop(attempt.query_id, None)
        for txid in attempt.waiting:
            self._by_txid.pop(txid, None)
        self._fail_now(attempt.query_id, code, reason)

    def _fail_now(self, query_id: int, code: str, reason: str) -> None:
        self.stats[f"connect.failed.{code}"] += 1
        self._ctx.events.append(ConnectFailed(query_id, code, reason))

    def cancel(self, query_id: int) -> None:
        """The driver gave up on ``query_id`` (its own timeout): forget it quietly."""
        attempt = self.attempts.pop(query_id, None)
        if attempt is not None:
            for txid in attempt.waiting:
                self._by_txid.pop(txid, None)
        for channel in self.channels:
            if channel.query_id == query_id and channel.initiator and not channel.announced:
                channel.deadline = -math.inf

    def timer(self) -> float:
        retry = self.config.connect_retry
        due = math.inf
        for attempt in self.attempts.values():
            due = min(due, attempt.deadline)
            for sent, left in attempt.silent.values():
                if left:
                    due = min(due, sent + retry)
        return due

    def run(self, now: float) -> None:
        for attempt in [a for a in self.attempts.values() if a.deadline <= now]:
            self._finish_failed(attempt, "timeout", "no answer from the target in time")
        retry = self.config.connect_retry
        for attempt in list(self.attempts.values()):
            for index, (sent, left) in list(attempt.silent.items()):
                if left and now >= sent + retry:
                    attempt.silent[index] = (now, left - 1)
                    self.stats["connect.retries"] += 1
                    self._send(attempt, index, now)

    # --- target --------------------------------------------------------------------------

    def accept(
        self, offer: bytes, source: Address, relay: Address | None, circuit: int, now: float
    ) -> tuple[TraversalStatus, bytes]:
        """An offer arrived from ``source`` (through ``relay``'s ``circuit`` if any): our
        status and sealed answer."""
        ctx = self._ctx
        config = self.config
        try:
            intro = open_sealed(ctx.auth, offer, OFFER)
        except DecodeError as exc:
            self.stats[f"connect.offer.invalid.{exc.reason}"] += 1
            return TraversalStatus.BAD_OFFER, b""
        if intro.other != ctx.node_id or abs(intro.time - now) > config.offer_max_age:
            self.stats["connect.offer.invalid.stale"] += 1
            return TraversalStatus.BAD_OFFER, b""
        seen = self._accepted.get(intro.nonce)
        if seen is not None:
            self.stats["connect.offer.repeated"] += 1
            channel = self.channels.get(seen[1])
            if channel is not None and relay is not None and circuit:
                channel.relays.add((relay, circuit))
                if channel.relay is None:
                    channel.relay, channel.circuit = relay, circuit
            return TraversalStatus.OK, seen[0]
        policy = self.policy
        if policy is not None and not policy(intro.peer_id.to_bytes32(), source):
            self.stats["connect.offer.refused"] += 1
            return TraversalStatus.REFUSED, b""
        if len(self.channels) >= config.max_channels:
            self.stats["connect.offer.refused_limit"] += 1
            return TraversalStatus.RESOURCE_LIMIT, b""
        private, public = ctx.auth.new_ephemeral(ctx.rng)
        shared = ctx.auth.agree(private, intro.ephemeral)
        if shared is None:
            return TraversalStatus.BAD_OFFER, b""
        to_us, from_us = channel_keys(
            shared, intro.peer_id, ctx.node_id, intro.ephemeral, public, intro.nonce
        )
        handle = self.channels.new_handle()
        nat_class, own_ip, addresses = self._own()
        answer = seal(
            ctx.auth, ANSWER, intro.peer_id, intro.nonce, now, public, handle, nat_class,
            addresses,
        )  # fmt: skip
        channel = Channel(
            handle, intro.peer_id, intro.channel, from_us, to_us, initiator=False, query_id=0,
            now=now,
        )  # fmt: skip
        channel.pair = f"{nat_class}-{intro.nat_class}"
        channel.deadline = now + max(10.0, 2 * config.relay_after + 2.0)
        if relay is not None:
            channel.candidates = punchable(intro.addresses, source[0], own_ip)
            if circuit:
                channel.relay, channel.circuit = relay, circuit
                channel.relays.add((relay, circuit))
            hopeless = nat_class == intro.nat_class == "endpoint-dependent"
            if circuit and (config.relay_only or hopeless):
                channel.may_punch = False
            else:
                channel.punch(config.punch_rounds, now)
        self.channels.add(channel, now)
        self._accepted[intro.nonce] = (answer, handle)
        if len(self._accepted) > config.max_offers_remembered:
            self._accepted.popitem(last=False)
        self.stats["connect.offer.accepted"] += 1
        return TraversalStatus.OK, answer
