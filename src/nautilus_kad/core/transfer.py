"""The replication STORE queue: every record a holder passes on goes through here.

Republish, handoff to a newcomer, repair after a death and a clean leave all hand records to
other nodes. :class:`Transfers` sends their STOREs under one flow control: at most
``replication_window`` in flight (a slow STORE keeps its slot until it is answered or fails,
so the sender slows down with its peers), each with the write token the peer gave us recently
(a peer without one first gets one FIND_NODE, and the items for it wait). Items belong to a
:class:`ReplBatch`; when the last item of a batch is done its continuation runs (a leave's
:class:`~.events.LeaveDone`, a republish's outcome).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .context import NodeContext
from .ids import NodeId
from .messages import Contact, FindNode, Message, Store, Stored
from .pending import Pending
from .records import Record, for_transfer
from .rpc import Queries, Requests
from .tokens import WriteTokens

REPLICATION_QID = 0
"""Query id of the replication sink: user query ids start at 1."""


@dataclass(slots=True, eq=False)
class ReplBatch:
    """Replication STOREs started for one reason; ``on_done`` runs when all are answered."""

    kind: str
    """``republish``, ``handoff``, ``repair`` or ``leave``."""
    key: NodeId | None = None
    record: Record | None = None
    """The version a republish started from (only that version may be dropped afterwards)."""
    drop_after_acks: int = 0
    """A holder outside the k closest drops its copy once this many of them stored it."""
    own_copy: bool = False
    """A republish by one of the k closest: its own copy counts as one of the k."""
    query_id: int | None = None
    records: int = 0
    outstanding: int = 0
    sent: int = 0
    acks: int = 0
    on_done: Callable[[ReplBatch, float], None] | None = None


@dataclass(slots=True, eq=False)
class ReplItem:
    contact: Contact
    key: NodeId
    batch: ReplBatch


@dataclass(slots=True, eq=False)
class _TokenQuery:
    """A FIND_NODE sent only to get a peer's write token (for a handoff or a leave)."""

    query_id: int
    node_id: NodeId
    owner: Transfers

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        self.on_timeout(pending, now)

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        pass

    def on_timeout(self, pending: Pending, now: float) -> None:
        del self.owner.queries[self.query_id]
        self.owner.token_arrived(self.node_id, now)


@dataclass(slots=True, eq=False)
class _ReplicationSink:
    """Receives the answers to every replication STORE (one shared query)."""

    owner: Transfers
    query_id: int = REPLICATION_QID

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        owner = self.owner
        item = owner.inflight.pop(pending.txid, None)
        if item is not None:
            stored = isinstance(message, Stored) and not departing
            if not stored:
                owner.stats["replicate.refused"] += 1
            owner.item_done(item, stored, now)
            owner.pump(now)

    def on_slow(self, pending: Pending, now: float) -> None:
        # A slow STORE keeps its window slot until it is answered or fails for good:
        # when peers are slow (a loaded network), the sender slows down with them
        # instead of piling on more.
        self.owner.stats["replicate.slow"] += 1

    def on_grace_over(self, pending: Pending, now: float) -> None:
        pass

    def on_timeout(self, pending: Pending, now: float) -> None:
        owner = self.owner
        item = owner.inflight.pop(pending.txid, None)
        if item is not None:
            owner.item_done(item, False, now)
            owner.pump(now)


class Transfers:
    """The flow-controlled queue of replication STOREs."""

    __slots__ = ("_ctx", "_requests", "_tokens", "_waiters", "inflight", "queries", "queue",
                 "stats")  # fmt: skip

    def __init__(
        self, ctx: NodeContext, queries: Queries, requests: Requests, tokens: WriteTokens
    ) -> None:
        self._ctx = ctx
        self.stats = ctx.stats
        self.queries = queries
        self._requests = requests
        self._tokens = tokens
        self.queue: deque[ReplItem] = deque()
        self.inflight: dict[bytes, ReplItem] = {}
        self._waiters: dict[NodeId, list[ReplItem]] = {}
        queries[REPLICATION_QID] = _ReplicationSink(self)

    @property
    def backlog(self) -> int:
        """STOREs queued, in flight, or waiting for their peer's token."""
        waiting = sum(len(items) for items in self._waiters.values())
        return len(self.queue) + len(self.inflight) + waiting

    def pump(self, now: float) -> None:
        """Send queued replication STOREs while fewer than ``replication_window`` are in
        flight."""
        ctx = self._ctx
        queue = self.queue
        window = ctx.config.replication_window
        inflight = self.inflight
        while queue and len(inflight) < window:
            item = queue.popleft()
            stored = ctx.store.get(item.key, now)
            if stored is None:
                self.item_done(item, False, now)
                continue
            token = self._tokens.fresh(item.contact.node_id, now)
            if token is None:
                self._await_token(item, now)
                continue
            contact = item.contact
            request = Store(for_transfer(stored.record, stored.expires_at, now), token)
            txid = self._requests.send(
                contact.address, contact.node_id, request, now, REPLICATION_QID
            )
            if not txid:  # too many requests in flight: try again on the next tick
                queue.appendleft(item)
                break
            item.batch.sent += 1
            self.stats["replicate.stores"] += 1
            inflight[txid] = item

    def item_done(self, item: ReplItem, stored: bool, now: float) -> None:
        self.batch_step(item.batch, 1, 1 if stored else 0, now)

    def batch_step(self, batch: ReplBatch, done: int, acks: int, now: float) -> None:
        batch.outstanding -= done
        batch.acks += acks
        if batch.outstanding > 0:
            return
        if batch.on_done is not None:
            batch.on_done(batch, now)

    def _await_token(self, item: ReplItem, now: float) -> None:
        """Park ``item`` until its peer gives us a write token (one FIND_NODE per peer)."""
        node_id = item.contact.node_id
        waiters = self._waiters.get(node_id)
        if waiters is not None:
            waiters.append(item)
            return
        queries = self.queries
        qid = queries.new_id()
        queries[qid] = _TokenQuery(qid, node_id, self)
        contact = item.contact
        own = self._ctx.node_id
        if not self._requests.send(contact.address, node_id, FindNode(own), now, qid):
            del queries[qid]
            self.item_done(item, False, now)
            return
        self.stats["replicate.token_requests"] += 1
        self._waiters[node_id] = [item]

    def token_arrived(self, node_id: NodeId, now: float) -> None:
        """A token request was answered (or failed): release the items parked on it."""
        waiters = self._waiters.pop(node_id, [])
        if self._tokens.fresh(node_id, now) is None:
            for item in waiters:
                self.item_done(item, False, now)
        else:
            self.queue.extendleft(reversed(waiters))
        self.pump(now)
