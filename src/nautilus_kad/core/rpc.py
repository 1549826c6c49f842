"""The request/response layer: requests in flight, their timers, and who gets each outcome.

Every request we send gets a random txid, a soft timeout (the peer's adaptive RTT estimate:
past it a lookup frees the slot and re-sends once) and a hard deadline (``request_timeout``:
past it the request failed). :class:`Requests` owns the table of requests in flight, the timer
heap and the count of requests in flight per peer; it matches each answer to its request
(unsolicited answers and answers of the wrong type are dropped and counted) and hands every
timeout to the callables given at construction. It never knows what a request was for: the
query that sent it (its *owner*, the libtorrent observer / aioquic delivery-handler pattern)
is told through the :class:`Owner` interface.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Protocol

from .context import NodeContext
from .events import QueryFailed
from .ids import NodeId
from .messages import (
    Address,
    AnyRequest,
    Connect,
    ConnectReply,
    Contact,
    Dialback,
    DialbackReply,
    Envelope,
    Error,
    FindNode,
    FindValue,
    Forward,
    ForwardReply,
    Message,
    MessageType,
    Nodes,
    Ping,
    Pong,
    ProbeRelay,
    ProbeRelayReply,
    Register,
    RegisterReply,
    Store,
    Stored,
    Value,
)
from .pending import Pending
from .wire import Wire

HARD, SOFT, GRACE = 0, 1, 2
"""Kinds of request timer: the hard deadline, the soft timeout, a lookup's slow grace."""
_TX_REQUEST_KEY = {t: f"tx.request.{t.name}" for t in MessageType}

Outcome = Callable[[Pending, float], None]


class Owner(Protocol):
    """What a query that sends requests is told about each of them."""

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        """A valid answer arrived (``departing``: its sender said it is leaving)."""

    def on_slow(self, pending: Pending, now: float) -> None:
        """The request passed its soft timeout (it may still be answered)."""

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """A slow request used up the grace its owner gave it."""

    def on_timeout(self, pending: Pending, now: float) -> None:
        """The request failed for good (hard deadline)."""


class Queries(dict[int, Owner]):
    """Every query running, by id (user-visible ids start at 1): the owners that requests
    report to. A request whose query already ended finds nothing here."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._next_id = 1

    def new_id(self) -> int:
        qid = self._next_id
        self._next_id += 1
        return qid

    def fail(self, qid: int, reason: str) -> None:
        """End query ``qid`` with :class:`QueryFailed`."""
        self.pop(qid, None)
        self._ctx.events.append(QueryFailed(qid, reason))


class Requests:
    """Requests in flight: txids, timers, per-peer counts, answer matching."""

    __slots__ = ("_ctx", "_on_grace", "_on_hard", "_on_soft", "_seq", "_timers", "_wire",
                 "awaiting", "pending")  # fmt: skip

    def __init__(
        self,
        ctx: NodeContext,
        wire: Wire,
        pending: dict[bytes, Pending],
        on_soft: Outcome,
        on_hard: Outcome,
        on_grace: Outcome,
    ) -> None:
        self._ctx = ctx
        self._wire = wire
        self._on_soft = on_soft
        self._on_hard = on_hard
        self._on_grace = on_grace
        self.pending = pending
        """The requests in flight by txid (the wire reads it for unknown-session notices)."""
        self._timers: list[tuple[float, int, bytes, int]] = []
        self._seq = 0
        self.awaiting: dict[NodeId, int] = {}
        """Requests in flight per peer: a peer we await an answer from needs no PING of
        its own when it writes to us (its answer is the proof)."""

    def __len__(self) -> int:
        return len(self.pending)

    def send(
        self,
        address: Address,
        node_id: NodeId | None,
        request: AnyRequest,
        now: float,
        query_id: int | None,
        pad_to: int = 0,
    ) -> bytes:
        """Send a request and arm its timers; returns its txid, or b"" if over the limit."""
        ctx = self._ctx
        if len(self.pending) >= ctx.config.max_pending_requests:
            ctx.stats["tx.refused.pending_limit"] += 1
            return b""
        self._wire.ingress.expect(address[0])  # its answer is paid for
        rng = ctx.rng
        txid = rng.randbytes(8)
        while txid in self.pending:
            txid = rng.randbytes(8)
        pending = Pending(txid, address, node_id, request, now, query_id)
        pending.pad_to = pad_to
        self.pending[txid] = pending
        if node_id is not None:
            self.awaiting[node_id] = self.awaiting.get(node_id, 0) + 1
        ctx.stats[_TX_REQUEST_KEY[request.TYPE]] += 1
        self._wire.transmit(pending, now)
        if node_id is not None:
            soft = ctx.table.soft_timeout(node_id)
        else:
            soft = ctx.config.max_soft_timeout
        # _push twice, inlined (this runs for every request)
        timers = self._timers
        seq = self._seq
        heapq.heappush(timers, (now + soft, seq + 1, txid, SOFT))
        heapq.heappush(timers, (now + ctx.config.request_timeout, seq + 2, txid, HARD))
        self._seq = seq + 2
        return txid

    def _push(self, deadline: float, txid: bytes, kind: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (deadline, self._seq, txid, kind))

    def forget(self, pending: Pending) -> None:
        """``pending`` is answered or failed: it no longer counts as in flight."""
        del self.pending[pending.txid]
        node_id = pending.node_id
        if node_id is not None:
            left = self.awaiting[node_id] - 1
            if left:
                self.awaiting[node_id] = left
            else:
                del self.awaiting[node_id]
        self._wire.forget(pending)

    def match(self, envelope: Envelope, message: Message, address: Address) -> Pending | None:
        """The request ``message`` answers, or None (dropped and counted: unsolicited, from
        another address or node, or not a legal answer to what we asked)."""
        pending = self.pending.get(envelope.txid)
        stats = self._ctx.stats
        if (
            pending is None
            or pending.address != address
            or (pending.node_id is not None and pending.node_id != envelope.sender_id)
        ):
            stats["rx.dropped"] += 1
            stats["rx.dropped.unsolicited"] += 1
            return None
        if not answers(pending.request, message):
            stats["rx.dropped"] += 1
            stats["rx.dropped.mismatch"] += 1
            return None
        return pending

    def resend_and_wait(self, pending: Pending, now: float) -> bool:
        """A lookup's or a put's request passed its soft timeout: send it once more and
        wait ``slow_grace`` for an answer (then the grace timer fires). False when the
        configuration gives no grace: the caller stops waiting now."""
        self._wire.retransmit(pending, now)
        grace = self._ctx.config.slow_grace
        if grace <= 0:
            return False
        self._push(now + grace, pending.txid, GRACE)
        return True

    def run(self, now: float) -> None:
        """Fire every timer due at ``now`` (those of answered requests are skipped)."""
        timers = self._timers
        pending_of = self.pending.get
        while timers and timers[0][0] <= now:
            _, _, txid, kind = heapq.heappop(timers)
            pending = pending_of(txid)
            if pending is None:
                continue
            if kind == SOFT:
                self._on_soft(pending, now)
            elif kind == HARD:
                self._on_hard(pending, now)
            else:
                self._on_grace(pending, now)

    def next_deadline(self) -> float:
        """The earliest timer of a request still in flight (inf: none)."""
        timers = self._timers
        pending = self.pending
        # Timers of requests already answered would only wake the driver for nothing
        # (run skips them): drop them from the top of the heap first.
        while timers and timers[0][2] not in pending:
            heapq.heappop(timers)
        return timers[0][0] if timers else math.inf


def answers(request: AnyRequest, response: Message) -> bool:
    """Whether ``response`` is a legal answer to ``request`` (ERROR always is)."""
    if isinstance(response, Error):
        return True
    match request:
        case Ping():
            return isinstance(response, Pong)
        case FindNode():
            return isinstance(response, Nodes)
        case FindValue():
            return isinstance(response, Nodes | Value)
        case Store():
            return isinstance(response, Stored)
        case Dialback():
            return isinstance(response, DialbackReply)
        case ProbeRelay():
            return isinstance(response, ProbeRelayReply)
        case Register():
            return isinstance(response, RegisterReply)
        case Connect():
            return isinstance(response, ConnectReply)
        case Forward():
            return isinstance(response, ForwardReply)
    return False
