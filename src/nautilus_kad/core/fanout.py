"""The one STORE fan-out: every STORE this node sends to hand a record on goes through here.

A user's put, :meth:`~nautilus_kad.core.engine.KadEngine.store_at`, the publisher's re-put,
the holders' republish, the handoff to a newcomer, the repair after a death, a clean leave,
the write-back of the newest signed version after a get and the caching of a found value all
send STOREs. They used to do it three ways (a put query that waited with grace, a windowed
replication queue that fetched tokens, and fire-and-forget sends whose answers nobody read),
differing mostly by accident. Here every STORE is a :class:`StoreItem` of a
:class:`StoreBatch`, sent under one owner (:class:`_Sink`) with one set of rules:

* a slow STORE is sent once more and waited for ``slow_grace`` (a lost datagram costs one
  re-send, not a replica);
* a refusal, a departing storer and a timeout all count as "not stored", in one set of
  counters (``fanout.*``; ``store.*`` is the storer's side);
* the token is the one the caller has (a lookup's answer), else the one the peer gave us
  recently; a peer without one first gets one FIND_NODE, and the items for it wait;
* when the last item of a batch is done its continuation runs (a put's
  :class:`~.events.PutDone`, a republish's outcome, a leave's :class:`~.events.LeaveDone`).

What differs is deliberate and is a parameter of the batch: a **background** batch
(replication) waits in one queue with at most ``replication_window`` STOREs in flight, sends
the copy its store holds at send time (a newer version may have arrived meanwhile) and keeps
its window slot until a slow STORE is answered or fails for good, so the sender slows down
with its peers; a **foreground** batch (a put, a get's write-back, caching) sends its record
at once and stops waiting after the grace, so a user is not queued behind hours of
replication.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .context import NodeContext
from .fifo import Fifo
from .ids import NodeId
from .messages import Contact, Error, ErrorCode, FindNode, Message, Store, Stored
from .pending import Pending
from .records import Record, for_transfer
from .rpc import Queries, Requests
from .tokens import WriteTokens

FANOUT_QID = 0
"""Query id of the one owner of every STORE: user query ids start at 1."""


@dataclass(slots=True, eq=False)
class StoreBatch:
    """STOREs started for one reason; ``on_done`` runs when all are done."""

    kind: str
    """``put``, ``republish``, ``handoff``, ``repair``, ``leave``, ``write-back`` or
    ``cache``."""
    background: bool = True
    """Replication (windowed, the store's current copy, patient) or not (see the module)."""
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
    stored_on: list[Contact] = field(default_factory=list)
    """Who acknowledged (a put reports them)."""
    errors: list[tuple[ErrorCode, str]] = field(default_factory=list)
    """Why storers refused (a put reports them; the publisher reads STALE there)."""
    on_done: Callable[[StoreBatch, float], None] | None = None
    timeouts: int = 0
    """STOREs that passed their soft timeout and had not been answered when the batch
    ended (a put reports them, with its lookup's, in :class:`~.events.PutDone`)."""


@dataclass(slots=True, eq=False)
class StoreItem:
    """One STORE of ``key`` on ``contact``."""

    contact: Contact
    key: NodeId
    batch: StoreBatch
    record: Record | None = None
    """What to send; None: the copy our store holds when the STORE leaves (background)."""
    token: bytes = b""
    """The contact's write token if the caller has it (else the one it gave us recently)."""
    cas: int | None = None


@dataclass(slots=True, eq=False)
class _TokenQuery:
    """A FIND_NODE sent only to get a peer's write token."""

    query_id: int
    node_id: NodeId
    owner: StoreFanout

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        self.on_timeout(pending, now)

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """Never called: only :meth:`.Requests.resend_and_wait` arms a grace, and this
        owner's requests never pass through it (it waits for the hard deadline)."""

    def on_timeout(self, pending: Pending, now: float) -> None:
        del self.owner.queries[self.query_id]
        self.owner.token_arrived(self.node_id, now)


@dataclass(slots=True, eq=False)
class _Sink:
    """The rpc owner of every STORE (one shared query)."""

    owner: StoreFanout
    query_id: int = FANOUT_QID

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        owner = self.owner
        item = owner.take(pending.txid)
        if item is None:
            return
        if pending.slow:
            item.batch.timeouts -= 1  # it answered after all
        stats = owner.stats
        stored = isinstance(message, Stored) and not departing
        if departing:  # a copy that leaves with it (its handoff may be past this key)
            stats["fanout.departing"] += 1
        elif not stored:
            stats["fanout.refused"] += 1
            if isinstance(message, Error):
                item.batch.errors.append((message.code, message.message))
        if stored:
            item.batch.stored_on.append(contact)
        owner.item_done(item, stored, now)
        owner.pump(now)

    def on_slow(self, pending: Pending, now: float) -> None:
        # A slow STORE gets the same grace as a slow peer of a lookup, and one more copy:
        # on a loaded machine an answer 50 ms late is common, and a lost datagram should
        # cost a re-send, not a replica.
        owner = self.owner
        # Always in flight here: an item leaves ``inflight`` only when its request is
        # answered or hits its hard timeout (the request is forgotten: no timer of it fires
        # again) or when its grace is over, which comes after its one soft timeout.
        item = owner.inflight[pending.txid]
        owner.stats["fanout.slow"] += 1
        item.batch.timeouts += 1
        if not owner.requests.resend_and_wait(pending, now):
            self.on_grace_over(pending, now)

    def on_grace_over(self, pending: Pending, now: float) -> None:
        # A background STORE keeps its window slot until it is answered or fails for good:
        # when peers are slow (a loaded network) the sender slows down with them instead of
        # piling on more. A foreground one (a put) finishes without that replica's answer.
        item = self.owner.inflight.get(pending.txid)
        if item is not None and not item.batch.background:
            self.on_timeout(pending, now)

    def on_timeout(self, pending: Pending, now: float) -> None:
        owner = self.owner
        item = owner.take(pending.txid)
        if item is not None:
            owner.item_done(item, False, now)
            owner.pump(now)


class StoreFanout:
    """Every STORE in flight or waiting: the background queue and its window, the
    foreground sends, and the peers whose token is being fetched."""

    __slots__ = ("_ctx", "_tokens", "_waiters", "in_window", "inflight", "queries", "queue",
                 "requests", "stats")  # fmt: skip

    def __init__(
        self, ctx: NodeContext, queries: Queries, requests: Requests, tokens: WriteTokens
    ) -> None:
        self._ctx = ctx
        self.stats = ctx.stats
        self.queries = queries
        self.requests = requests
        self._tokens = tokens
        self.queue: Fifo[StoreItem] = Fifo()
        """Background items waiting for a window slot."""
        self.inflight: dict[bytes, StoreItem] = {}
        self.in_window = 0
        """Background items among ``inflight``."""
        self._waiters: dict[NodeId, list[StoreItem]] = {}
        queries[FANOUT_QID] = _Sink(self)

    @property
    def backlog(self) -> int:
        """Background STOREs queued, in flight, or waiting for their peer's token."""
        waiting = sum(
            1 for items in self._waiters.values() for item in items if item.batch.background
        )
        return len(self.queue) + self.in_window + waiting

    def send_now(self, batch: StoreBatch, items: list[StoreItem], now: float) -> None:
        """Start a foreground batch: every STORE leaves at once. The continuation runs
        when all are done (at once when there are none)."""
        batch.outstanding += len(items)
        if not items:
            self.batch_step(batch, 0, 0, now)
            return
        for item in items:
            if not self._send(item, now):
                self.item_done(item, False, now)

    def pump(self, now: float) -> None:
        """Send queued background STOREs while fewer than ``replication_window`` are in
        flight."""
        queue = self.queue
        window = self._ctx.config.replication_window
        while queue and self.in_window < window:
            item = queue.popleft()
            if not self._send(item, now):  # too many requests in flight: on the next tick
                queue.appendleft(item)
                break

    def _send(self, item: StoreItem, now: float) -> bool:
        """Send ``item``'s STORE; False only when the request table is full (the item is
        otherwise sent, parked for a token, or done)."""
        record = item.record
        if record is None:
            stored = self._ctx.store.get(item.key, now)
            if stored is None:
                self.item_done(item, False, now)
                return True
            record = for_transfer(stored.record, stored.expires_at, now)
        contact = item.contact
        token = item.token or self._tokens.fresh(contact.node_id, now)
        if token is None:
            self._await_token(item, now)
            return True
        request = Store(record, token, item.cas)
        txid = self.requests.send(contact.address, contact.node_id, request, now, FANOUT_QID)
        if not txid:
            return False
        batch = item.batch
        batch.sent += 1
        if batch.background:
            self.in_window += 1
            self.stats["replicate.stores"] += 1
        self.inflight[txid] = item
        return True

    def take(self, txid: bytes) -> StoreItem | None:
        """The item ``txid`` carried, no longer in flight (None: already done)."""
        item = self.inflight.pop(txid, None)
        if item is not None and item.batch.background:
            self.in_window -= 1
        return item

    def item_done(self, item: StoreItem, stored: bool, now: float) -> None:
        self.batch_step(item.batch, 1, 1 if stored else 0, now)

    def batch_step(self, batch: StoreBatch, done: int, acks: int, now: float) -> None:
        batch.outstanding -= done
        batch.acks += acks
        if batch.outstanding > 0:
            return
        if batch.on_done is not None:
            batch.on_done(batch, now)

    def _await_token(self, item: StoreItem, now: float) -> None:
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
        if not self.requests.send(contact.address, node_id, FindNode(own), now, qid):
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
            for item in reversed(waiters):
                if item.batch.background:
                    self.queue.appendleft(item)
                elif not self._send(item, now):
                    self.item_done(item, False, now)
        self.pump(now)
