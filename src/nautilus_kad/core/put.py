"""Puts: STORE a record on the k closest nodes, and keep re-putting what we published.

:class:`Puts` is the STORE phase of a user's put (after the lookup for the key), of
:meth:`~nautilus_kad.core.engine.KadEngine.store_at` (no lookup: the caller knows the nodes)
and of the publisher's own re-put. Each :class:`PutQuery` is the rpc owner of its STOREs: a
slow replica gets the lookup's grace and one re-sent copy, and the query ends when every STORE
was answered or gave up.

:class:`Publisher` remembers the records this node's user published with ``republish=True``
and re-puts each one every ``publisher_republish_interval`` with a longer TTL, until a newer
version by anyone else supersedes it or the user unpublishes it.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .context import FLAG_CLIENT, NodeContext
from .events import PutDone
from .holdings import Holdings
from .ids import NodeId
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import Contact, Error, ErrorCode, Message, Store, Stored
from .pending import Pending
from .records import Record
from .replication import among_k_closest
from .rpc import Requests

_SUPERSEDED = frozenset({ErrorCode.STALE_RECORD, ErrorCode.STALE_SEQUENCE})
"""Refusals that mean a newer version is stored: the publisher stops republishing its own."""


@dataclass(slots=True, eq=False)
class PutQuery:
    """The STOREs of one put, and what they brought."""

    query_id: int
    record: Record
    queries: int
    owner: Puts
    waiting: set[bytes] = field(default_factory=set)
    acks: list[Contact] = field(default_factory=list)
    errors: list[tuple[ErrorCode, str]] = field(default_factory=list)
    internal: bool = False
    """The publisher's own republish: no event; a STALE answer ends the republishing."""
    timeouts: int = 0
    """The lookup's timeouts, then STOREs that passed their soft timeout and had not been
    answered by the end (as :attr:`LookupQuery.timeouts` counts them)."""

    # --- rpc owner ---------------------------------------------------------------------

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        self.waiting.discard(pending.txid)
        if pending.slow:
            self.timeouts -= 1  # it answered after all
        stats = self.owner.stats
        if departing:  # a copy that leaves with it (its handoff may be past this key)
            stats["put.store_departing"] += 1
        elif isinstance(message, Stored):
            self.acks.append(contact)
        else:
            stats["put.store_refused"] += 1
            if isinstance(message, Error):
                self.errors.append((message.code, message.message))
        self.owner.progress(self)

    def on_slow(self, pending: Pending, now: float) -> None:
        # A slow replica gets the same grace as a slow peer of a lookup (and one more
        # copy of its STORE): on a loaded machine an answer 50 ms late is common, and a
        # put that stops counting at the soft timeout reports fewer copies than it made.
        self.timeouts += 1
        if not self.owner.requests.resend_and_wait(pending, now):
            self.on_timeout(pending, now)

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """The put finishes without that replica's answer."""
        self.on_timeout(pending, now)

    def on_timeout(self, pending: Pending, now: float) -> None:
        self.waiting.discard(pending.txid)
        self.owner.progress(self)


class Puts:
    """The STORE fan-out of puts (user, ``store_at``, publisher re-put)."""

    __slots__ = ("_ctx", "_holdings", "_lookups", "_superseded", "requests", "stats")

    def __init__(
        self,
        ctx: NodeContext,
        lookups: Lookups,
        requests: Requests,
        holdings: Holdings,
        superseded: Callable[[Record], None],
    ) -> None:
        self._ctx = ctx
        self.stats = ctx.stats
        self._lookups = lookups
        self.requests = requests
        self._holdings = holdings
        self._superseded = superseded

    def start(self, record: Record, cas: int | None, now: float, *, internal: bool) -> int:
        """Look up the k closest to the key, then STORE on them (``internal``: the
        publisher's own re-put, which reports no event)."""

        def found(query: LookupQuery, closest: list[Candidate], now: float) -> None:
            if not internal and self._lookups.failed(query):
                return
            put = PutQuery(
                query.query_id,
                record,
                query.lookup.queries_sent,
                self,
                internal=internal,
                timeouts=query.timeouts,
            )
            self.store_on(put, cas, [cand for cand in closest if cand.token], now)

        return self._lookups.start(record.key, now, want_value=False, on_done=found)

    def new(self, record: Record) -> PutQuery:
        """A put with no lookup (``store_at``)."""
        return PutQuery(self._lookups.queries.new_id(), record, 0, self)

    def store_on(
        self, put: PutQuery, cas: int | None, targets: list[Candidate], now: float
    ) -> None:
        """STORE ``put.record`` on ``targets`` (nearest first, each with a token), and on
        this node when it is among them."""
        ctx = self._ctx
        record = put.record
        self._lookups.queries[put.query_id] = put
        # We store too when we are among the k closest (in a small network we may be one of
        # the nodes that should hold the record) unless we are a client that will not serve.
        own_distance = ctx.node_id ^ record.key
        farthest = targets[-1].distance if targets else 0
        if not ctx.flags & FLAG_CLIENT and among_k_closest(
            own_distance, len(targets), farthest, ctx.config.k
        ):
            own = Contact(ctx.node_id, *(ctx.address or ctx.observed_address or ("0.0.0.0", 1)))
            code, text = self._holdings.accept(record, cas, now, validate=False)
            if code is None:
                put.acks.append(own)
            else:
                put.errors.append((code, text))
            if len(targets) >= ctx.config.k:
                targets = targets[:-1]
        for cand in targets:
            txid = self.requests.send(
                cand.contact.address,
                cand.contact.node_id,
                Store(record, cand.token, cas),
                now,
                put.query_id,
            )
            if txid:
                put.waiting.add(txid)
        self.progress(put)

    def progress(self, put: PutQuery) -> None:
        queries = self._lookups.queries
        if put.waiting or queries.get(put.query_id) is not put:
            return
        del queries[put.query_id]
        if put.internal:
            self.stats["publish.republished"] += 1
            if any(code in _SUPERSEDED for code, _ in put.errors):
                self._superseded(put.record)
            return
        self._ctx.events.append(
            PutDone(
                put.query_id,
                put.record.key,
                len(put.acks),
                tuple(put.acks),
                put.queries,
                tuple(put.errors),
                put.timeouts,
            )
        )


@dataclass(slots=True, eq=False)
class _Published:
    """A record this node's user put: re-put every ``publisher_republish_interval``."""

    record: Record
    base_ttl: int
    due: float


class Publisher:
    """The records we published, and their periodic re-put."""

    __slots__ = ("_ctx", "_heap", "_published", "_puts", "_seq")

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._published: dict[NodeId, _Published] = {}
        self._heap: list[tuple[float, int, NodeId]] = []
        self._seq = 0
        self._puts: Puts | None = None

    def attach(self, puts: Puts) -> None:
        """The fan-out the re-puts go through (it reports supersedes back here)."""
        self._puts = puts

    def publish_later(self, record: Record, due: float, base_ttl: int | None = None) -> None:
        ttl = record.ttl if base_ttl is None else base_ttl
        self._published[record.key] = _Published(record, ttl, due)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, record.key))

    def unpublish(self, key: NodeId) -> bool:
        return self._published.pop(key, None) is not None

    def published(self) -> list[tuple[Record, int]]:
        return [(p.record, p.base_ttl) for p in self._published.values()]

    def superseded(self, record: Record) -> None:
        """Somebody published a newer version under this key: ours is history."""
        published = self._published.get(record.key)
        if published is not None and published.record == record:
            del self._published[record.key]
            self._ctx.stats["publish.superseded"] += 1

    def next_deadline(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def run(self, now: float) -> None:
        """Re-put every record that is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            published = self._published.get(key)
            if published is None or published.due != due:
                continue
            old = published.record
            # Same publication (timestamp and value), longer life: storers keep the
            # version with the larger TTL, and a newer write by anyone else still wins.
            # (Without a publication time the TTL counts from arrival: the base TTL again.)
            if old.timestamp_ms == 0:
                ttl = published.base_ttl
            else:
                ttl = max(old.ttl, math.ceil(now - old.published_at) + published.base_ttl)
            record = dataclasses.replace(old, ttl=ttl)  # a signed record keeps its signature
            published.record = record
            published.due = now + self._ctx.config.publisher_republish_interval
            self._seq += 1
            heapq.heappush(heap, (published.due, self._seq, key))
            self._ctx.stats["publish.started"] += 1
            assert self._puts is not None
            self._puts.start(record, None, now, internal=True)
