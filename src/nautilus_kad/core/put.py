"""Puts: STORE a record on the k closest nodes, and keep re-putting what we published.

:class:`Puts` is the STORE phase of a user's put (after the lookup for the key), of
:meth:`~nautilus_kad.core.engine.KadEngine.store_at` (no lookup: the caller knows the nodes)
and of the publisher's own re-put. The STOREs are a foreground batch of the one fan-out
(:mod:`.fanout`): a slow replica gets the lookup's grace and one re-sent copy, and the put ends
when every STORE was answered or gave up.

:class:`Publisher` remembers the records this node's user published with ``republish=True``
and re-puts each one every ``publisher_republish_interval`` with a longer TTL, until a newer
version by anyone else supersedes it or the user unpublishes it.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from .context import FLAG_CLIENT, NodeContext
from .events import PutDone
from .fanout import StoreBatch, StoreFanout, StoreItem
from .holdings import Holdings
from .ids import NodeId
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import Contact, ErrorCode
from .records import Record
from .replication import among_k_closest

_SUPERSEDED = frozenset({ErrorCode.STALE_RECORD, ErrorCode.STALE_SEQUENCE})
"""Refusals that mean a newer version is stored: the publisher stops republishing its own."""


class Puts:
    """Puts (user, ``store_at``, publisher re-put): the lookup, our own copy, then a
    foreground batch of the one STORE fan-out."""

    __slots__ = ("_ctx", "_fanout", "_holdings", "_lookups", "_superseded", "stats")

    def __init__(
        self,
        ctx: NodeContext,
        lookups: Lookups,
        fanout: StoreFanout,
        holdings: Holdings,
        superseded: Callable[[Record], None],
    ) -> None:
        self._ctx = ctx
        self.stats = ctx.stats
        self._lookups = lookups
        self._fanout = fanout
        self._holdings = holdings
        self._superseded = superseded

    def start(self, record: Record, cas: int | None, now: float, *, internal: bool) -> int:
        """Look up the k closest to the key, then STORE on them (``internal``: the
        publisher's own re-put, which reports no event)."""

        def found(query: LookupQuery, closest: list[Candidate], now: float) -> None:
            if not internal and self._lookups.failed(query):
                return
            targets = [cand for cand in closest if cand.token]
            self.store_on(
                query.query_id, record, cas, targets, now,
                queries=query.lookup.queries_sent, internal=internal, timeouts=query.timeouts,
            )  # fmt: skip

        return self._lookups.start(record.key, now, want_value=False, on_done=found)

    def new_id(self) -> int:
        """A query id for a put with no lookup (``store_at``)."""
        return self._lookups.queries.new_id()

    def store_on(
        self,
        query_id: int,
        record: Record,
        cas: int | None,
        targets: list[Candidate],
        now: float,
        *,
        queries: int = 0,
        internal: bool = False,
        timeouts: int = 0,
    ) -> None:
        """STORE ``record`` on ``targets`` (nearest first, each with a token), and on this
        node when it is among them; ends with :class:`PutDone` (or, ``internal``, the
        publisher's bookkeeping). ``timeouts``: those of the lookup before (the put
        reports them with its STOREs')."""
        ctx = self._ctx
        batch = StoreBatch("put", background=False, key=record.key, record=record)
        batch.query_id = query_id
        batch.timeouts = timeouts
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
                batch.stored_on.append(own)
            else:
                batch.errors.append((code, text))
            if len(targets) >= ctx.config.k:
                targets = targets[:-1]
        batch.on_done = functools.partial(self._done, queries=queries, internal=internal)
        items = [
            StoreItem(cand.contact, record.key, batch, record, cand.token, cas) for cand in targets
        ]
        self._fanout.send_now(batch, items, now)

    def _done(self, batch: StoreBatch, now: float, *, queries: int, internal: bool) -> None:
        record = batch.record
        assert record is not None and batch.query_id is not None
        if internal:
            self.stats["publish.republished"] += 1
            if any(code in _SUPERSEDED for code, _ in batch.errors):
                self._superseded(record)
            return
        self._ctx.events.append(
            PutDone(
                batch.query_id,
                record.key,
                len(batch.stored_on),
                tuple(batch.stored_on),
                queries,
                tuple(batch.errors),
                batch.timeouts,
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
