"""Gets: FIND_VALUE lookups and what a found value is used for.

A get answers from the local store when it can (except for signed records, whose newest
version only a quorum of replicas can tell). Otherwise it runs a lookup that stops at the
first valid value, or after ``signed_get_quorum`` valid answers for signed records. When it
ends, the newest signed version is written back to the replicas that served an older one (and
to our own store), and the value is cached at the closest node that answered without it
(paper §2.3). A replica that answers after the get ended with an older signed copy is
corrected too (:meth:`Gets.late_value`). These STOREs are foreground batches of the one fan-out
(:mod:`.fanout`), with no continuation: nothing waits for them.
"""

from __future__ import annotations

from collections import OrderedDict

from .context import NodeContext
from .events import GetDone
from .fanout import StoreBatch, StoreFanout, StoreItem
from .holdings import Holdings
from .ids import NodeId
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import Contact, Value
from .records import Record, RecordKind

_RECENT_SIGNED = 256


class Gets:
    """Runs gets and repairs the replicas they found lagging."""

    __slots__ = ("_ctx", "_fanout", "_holdings", "_lookups", "_recent_signed")

    def __init__(
        self, ctx: NodeContext, lookups: Lookups, fanout: StoreFanout, holdings: Holdings
    ) -> None:
        self._ctx = ctx
        self._lookups = lookups
        self._fanout = fanout
        self._holdings = holdings
        self._recent_signed: OrderedDict[NodeId, Record] = OrderedDict()
        """Newest signed records of recent gets: late answers older than these get fixed."""

    def get(
        self,
        key: NodeId,
        now: float,
        kind: RecordKind | None,
        paths: int | None,
        alpha: int | None = None,
    ) -> int:
        """Start a get (see :meth:`~nautilus_kad.core.engine.KadEngine.get`)."""
        ctx = self._ctx
        local = ctx.store.get(key, now)
        qid = self._lookups.queries.new_id()
        if kind is RecordKind.SIGNED:
            held = local.record if local is not None and local.record.kind is kind else None
            return self._lookups.start(
                key,
                now,
                want_value=True,
                on_done=self._done,
                qid=qid,
                kind=kind,
                quorum=min(ctx.config.signed_get_quorum, ctx.config.k),
                local=held,
                paths=paths,
            )
        if local is not None and (kind is None or local.record.kind is kind):
            ctx.events.append(GetDone(qid, key, local.record, 0, 0))
            return qid
        return self._lookups.start(
            key,
            now,
            want_value=True,
            on_done=self._done,
            qid=qid,
            kind=kind,
            paths=paths,
            alpha=alpha,
        )

    def _done(self, query: LookupQuery, closest: list[Candidate], now: float) -> None:
        if query.local is not None and (query.found is None or query.local.supersedes(query.found)):
            query.found = query.local
        if self._lookups.failed(query):
            return
        repaired = 0
        if query.found is not None:
            repaired = self._repair_replicas(query, query.found, now)
            self._cache_value(query, query.found, now)
        lookup = query.lookup
        self._ctx.events.append(
            GetDone(
                query.query_id,
                lookup.target,
                query.found,
                lookup.hops,
                lookup.queries_sent,
                answers=len(query.answers),
                repaired=repaired,
                timeouts=query.timeouts,
            )
        )

    def _repair_replicas(self, query: LookupQuery, best: Record, now: float) -> int:
        """Write the newest signed record back to the replicas that answered with an older
        one (each gave us a write token with its answer), and to our own store."""
        if best.kind is not RecordKind.SIGNED:
            return 0
        recent = self._recent_signed
        recent[best.key] = best
        recent.move_to_end(best.key)
        if len(recent) > _RECENT_SIGNED:
            recent.popitem(last=False)
        batch = StoreBatch("write-back", background=False, key=best.key, record=best)
        items = [
            StoreItem(contact, best.key, batch, best, token)
            for contact, record, token in query.answers
            if record.seq < best.seq and token
        ]
        repaired = len(items)
        if items:
            self._fanout.send_now(batch, items, now)
        if query.local is not None and best.seq > query.local.seq:
            self._holdings.accept(best, None, now, validate=False)
        self._ctx.stats["get.repaired"] += repaired
        return repaired

    def late_value(self, contact: Contact, message: Value, now: float) -> None:
        """A replica answered a signed get that already returned: if its copy is older than
        what the get found, correct it too."""
        record = message.record
        best = self._recent_signed.get(record.key)
        if (
            best is not None
            and record.kind is RecordKind.SIGNED
            and record.seq < best.seq
            and message.token
        ):
            batch = StoreBatch("write-back", background=False, key=best.key, record=best)
            item = StoreItem(contact, best.key, batch, best, message.token)
            self._fanout.send_now(batch, [item], now)
            self._ctx.stats["get.repaired"] += 1

    def _cache_value(self, query: LookupQuery, record: Record, now: float) -> None:
        """Store a found value at the closest node that answered without it (paper §2.3)."""
        for cand in query.lookup.closest_responded():
            if cand.token and cand.contact.node_id not in query.holders:
                batch = StoreBatch("cache", background=False, key=record.key, record=record)
                item = StoreItem(cand.contact, record.key, batch, record, cand.token)
                self._fanout.send_now(batch, [item], now)
                self._ctx.stats["get.cached"] += 1
                return
