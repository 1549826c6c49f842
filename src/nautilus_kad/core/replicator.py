"""Replication by holders: the periodic republish, repairs, and the hand-over on leave.

Every holder republishes each record to the current k closest once per
``republish_interval`` (skipped when another holder re-stored it since: it arrived again
within the interval), through a lookup for the key and background batches of the STORE
fan-out (:mod:`~.fanout`). A holder outside the k closest hands its surplus copy over and
drops it once enough of the k closest stored it. A republish that confirms fewer than k copies is
retried after ``repair_delay`` (doubling), and a holder's death schedules a repair (a top-up
from the routing table, or a full republish after a shortfall). :meth:`Replicator.leave`
republishes everything once more, to nodes that do not hold it yet, before a clean stop.
"""

from __future__ import annotations

import functools
import math

from .context import FLAG_LEAVING, NodeContext
from .events import LeaveDone
from .fanout import StoreBatch, StoreFanout, StoreItem
from .fifo import Fifo
from .holdings import Holdings
from .ids import NodeId
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .replication import DueState, RepublishSchedule, among_k_closest

TOP_UP_MAX = 3
"""Nodes one repair top-up STOREs on at most."""
DROP_SHARE = 0.75
"""A holder outside the k closest lets its copy go once this share of the k closest
acknowledged the republish (under churn, one of k is often just dying)."""


class Replicator:
    """Republish timers, repairs and the leave of one holder."""

    __slots__ = (
        "_ctx",
        "_fanout",
        "_holdings",
        "_lookups",
        "_ready",
        "_republishing",
        "_starting",
        "leaving",
        "schedule",
    )  # fmt: skip

    def __init__(
        self,
        ctx: NodeContext,
        schedule: RepublishSchedule,
        holdings: Holdings,
        lookups: Lookups,
        fanout: StoreFanout,
    ) -> None:
        self._ctx = ctx
        self.schedule = schedule
        self._holdings = holdings
        self._lookups = lookups
        self._fanout = fanout
        self._ready: Fifo[NodeId] = Fifo()
        self._republishing = 0
        self.leaving: StoreBatch | None = None
        self._starting = False

    def leave(self, qid: int, now: float) -> None:
        """Hand every record on (see :meth:`~nautilus_kad.core.engine.KadEngine.leave`)."""
        keys = self._holdings.held.all()
        batch = StoreBatch(
            "leave", query_id=qid, records=len(keys), outstanding=len(keys), on_done=self._left
        )
        # Leaving supersedes any replication still waiting: it is about to be cut off.
        self._ready.clear()
        self._fanout.queue.clear()
        self.leaving = batch
        self._ctx.flags |= FLAG_LEAVING  # every datagram from now on says so
        self._ready.extend(keys)
        if not keys:
            self._ctx.events.append(LeaveDone(qid, 0, 0, 0))
        self.start_republishes(now)

    def _left(self, batch: StoreBatch, now: float) -> None:
        assert batch.query_id is not None
        self._ctx.events.append(LeaveDone(batch.query_id, batch.records, batch.sent, batch.acks))

    def loaded(self, key: NodeId, stored_at: float, now: float) -> None:
        """A record found in a persistent store at start-up gets a republish timer; those
        overdue are spread over the next ``repair_delay`` seconds."""
        due = stored_at + self._republish_period()
        if due <= now:
            due = now + self._ctx.config.repair_delay * self._ctx.rng.random()
        self.schedule.arm(key, due, stored_at)

    def _republish_period(self) -> float:
        cfg = self._ctx.config
        return cfg.republish_interval * (1.0 - cfg.republish_jitter * self._ctx.rng.random())

    def arm(self, key: NodeId, base: float, now: float) -> None:
        self.schedule.arm(key, now + self._republish_period(), base)

    # --- holder republish ------------------------------------------------------------

    def run(self, now: float) -> None:
        schedule = self.schedule
        for key, state in schedule.pop_due(now):
            stored = self._ctx.store.get(key, now)
            if stored is None:
                self._holdings.forget(key)
                continue
            if state.repair_after is not None and now < state.regular:
                self._repair(key, state, stored.stored_at, now)
                continue
            if stored.stored_at > state.base and self._among_closest(key):
                # Another holder re-stored it since we armed the timer: our turn is skipped.
                # (Only for one of the k closest: a holder outside them republishes anyway,
                # which hands the record to the k closest and lets its surplus copy go.)
                self._ctx.stats["republish.skipped"] += 1
                schedule.arm(key, stored.stored_at + self._republish_period(), stored.stored_at)
                continue
            schedule.arm(key, now + self._republish_period(), stored.stored_at)
            self._ready.append(key)
        self.start_republishes(now)

    def _among_closest(self, key: NodeId) -> bool:
        """Whether we are among the k closest live nodes we know to ``key``."""
        k = self._ctx.config.k
        others = self._ctx.table.closest(key, k, include_stale=False)
        farthest = others[-1].node_id ^ key if others else 0
        return among_k_closest(self._ctx.node_id ^ key, len(others), farthest, k)

    def _repair(self, key: NodeId, state: DueState, stored_at: float, now: float) -> None:
        """A repair came due before the regular republish."""
        assert state.repair_after is not None
        if stored_at > state.repair_after:
            # It reached us again since the death was found: another holder repaired it.
            self._ctx.stats["repair.skipped"] += 1
            self.schedule.repair_done(key)
            return
        state.last_repair = now
        if state.repair_full:
            # The last republish fell short of k: a full one (lookup, then k STOREs).
            self._ctx.stats["repair.full"] += 1
            self.schedule.arm(key, now + self._republish_period(), stored_at)
            self._ready.append(key)
            return
        self._top_up(key, max(1, state.repair_deaths), now)
        self.schedule.repair_done(key)

    def _top_up(self, key: NodeId, deaths: int, now: float) -> None:
        """Repair after holders died, from the routing table: STORE on the nodes that moved
        up into the last places of the k closest live nodes we know, one per death (at
        most three: beyond that the shortfall is the hourly republish's job). Holders are
        left alone: a STORE would count as a fresh receipt and postpone their republish,
        the exact check (a lookup) that also lets surplus copies go. Newcomers get records
        by handoff. A repairing holder is one of the closest to the key, where its table
        is most complete."""
        k = self._ctx.config.k
        others = self._ctx.table.closest(key, k, include_stale=False)
        farthest = others[-1].node_id ^ key if others else 0
        if len(others) >= k and among_k_closest(self._ctx.node_id ^ key, len(others), farthest, k):
            others = others[: k - 1]  # we hold one of the k places ourselves
        targets = others[len(others) - min(deaths, TOP_UP_MAX, len(others)) :]
        if not targets:
            return
        batch = StoreBatch("repair", key=key)
        items = [StoreItem(c, key, batch) for c in targets]
        batch.outstanding = len(items)
        self._ctx.stats["repair.topups"] += 1
        self._ctx.stats["repair.stores"] += len(items)
        self._fanout.queue.extend(items)

    def start_republishes(self, now: float) -> None:
        # A lookup can finish inside _start_lookup (nobody to ask) and call back here:
        # the outer loop carries on instead of recursing once per waiting record.
        if self._starting:
            return
        self._starting = True
        try:
            limit = self._ctx.config.max_concurrent_republish
            leaving = self.leaving
            while self._ready and self._republishing < limit:
                key = self._ready.popleft()
                if key not in self._holdings.held:
                    if leaving is not None:
                        self._fanout.batch_step(leaving, 1, 0, now)
                    continue
                self._republishing += 1
                self._ctx.stats["leave.lookups" if leaving else "republish.started"] += 1
                self._lookups.start(
                    key,
                    now,
                    want_value=leaving is not None,
                    holders_only=leaving is not None,
                    on_done=functools.partial(self._republish_found, leave=leaving),
                )
        finally:
            self._starting = False

    def _republish_found(
        self,
        query: LookupQuery,
        closest: list[Candidate],
        now: float,
        leave: StoreBatch | None,
    ) -> None:
        self._republishing -= 1
        self._republish_stores(query.lookup.target, closest, now, query, leave)
        self.start_republishes(now)

    def _republish_stores(
        self,
        key: NodeId,
        closest: list[Candidate],
        now: float,
        query: LookupQuery,
        leave: StoreBatch | None,
    ) -> None:
        """The republish lookup for ``key`` found ``closest``: STORE on the k closest (when
        leaving: on those of them that answered without the value)."""
        stored = self._ctx.store.get(key, now)
        k = self._ctx.config.k
        if leave is not None:
            holders = query.holders
            items = (
                []
                if stored is None
                else [
                    StoreItem(c.contact, key, leave)
                    for c in closest
                    if c.contact.node_id not in holders
                ]
            )
            leave.outstanding += len(items)
            self._fanout.queue.extendleft(reversed(items))
            self._fanout.batch_step(leave, 1, 0, now)  # the lookup itself is done
            self._fanout.pump(now)
            return
        if stored is None:
            return
        own_distance = self._ctx.node_id ^ key
        farthest = closest[-1].distance if closest else 0
        among = among_k_closest(own_distance, len(closest), farthest, k)
        targets = closest[: k - 1] if among else closest[:k]
        batch = StoreBatch(
            "republish", key=key, record=stored.record, own_copy=among, on_done=self._outcome
        )
        if not among:
            # k nodes closer than us answered: once all of them stored it, our copy is
            # surplus (keeping it would make every former holder republish it for ever).
            batch.drop_after_acks = math.ceil(DROP_SHARE * k)
        items = [StoreItem(c.contact, key, batch) for c in targets]
        batch.outstanding = len(items)
        if not items:
            self._outcome(batch, now)
            return
        self._fanout.queue.extend(items)
        self._fanout.pump(now)

    def _outcome(self, batch: StoreBatch, now: float) -> None:
        """A republish finished. Surplus copy handed over: drop it. Fewer than k copies
        confirmed while we know k nodes (the lookup lost peers to timeouts right after
        deaths, or under load): try again after ``repair_delay`` (doubling each time, up to
        the interval) instead of leaving the record short for a whole interval."""
        key = batch.key
        assert key is not None
        if batch.drop_after_acks and batch.acks >= batch.drop_after_acks:
            current = self._ctx.store.get(key, now)
            if current is not None and current.record == batch.record:
                self._holdings.remove(key)
                self._ctx.stats["republish.handed_over"] += 1
            return
        state = self.schedule.get(key)
        if state is None:
            return
        k = self._ctx.config.k
        copies = batch.acks + (1 if batch.own_copy else 0)
        if copies >= k or len(self._ctx.table) + 1 < k:
            state.shortfalls = 0
            return
        state.shortfalls += 1
        self._ctx.stats["republish.short"] += 1
        cfg = self._ctx.config
        delay = min(cfg.repair_delay * 2 ** (state.shortfalls - 1), cfg.republish_interval)
        self.schedule.request_repair(
            key, now, now + delay * (1.0 + self._ctx.rng.random()), cfg.repair_cooldown, full=True
        )
