"""Handoff and repair scans: which held records a peer that joined or died concerns.

When a peer enters our routing table, it may now be among the k closest to some records we
hold: we hand them over (handoff), unless enough closer likely holders will. When a peer
dies, the records it was among the k closest for need a prompt re-replication: each gets a
repair timer, staggered by our rank among the survivors (see :meth:`Scans._repair_keys`).

Both walk the held keys in XOR order from our id, ``scan_batch`` keys per timer tick, and
start where the peer can first be among the k closest (:meth:`Scans._start_at`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .context import NodeContext
from .fanout import StoreBatch, StoreFanout, StoreItem
from .fifo import Fifo
from .ids import ID_BITS, NodeId
from .messages import Contact
from .replication import HeldKeys, RepublishSchedule


@dataclass(slots=True, eq=False)
class _Scan:
    """Records to examine because ``peer`` joined (handoff) or died (repair), resumed in
    chunks of ``scan_batch`` from XOR distance ``next_distance`` (from our id)."""

    peer: Contact
    joined: bool
    next_distance: int


class _Ranker:
    """Ranks one peer against many keys without sorting the table for each key.

    In XOR space, whether node ``x`` is closer to key ``K`` than node ``a`` depends only on
    the highest bit ``p`` where ``x`` and ``a`` differ: ``x`` is closer iff ``K`` differs
    from ``a`` at bit ``p`` too. So the table is grouped once by that bit (relative to the
    peer, and relative to us), and a key's count is a sum over the bits set in ``K ^ a``.
    """

    __slots__ = ("_by_own", "_by_peer", "_own", "_peer")

    def __init__(
        self,
        own: NodeId,
        peer: NodeId,
        by_peer: list[tuple[int, int]],
        by_own: list[tuple[int, list[float]]],
    ) -> None:
        self._own = own
        self._peer = peer
        self._by_peer = by_peer
        self._by_own = by_own

    def closer_than_peer(self, key: NodeId) -> int:
        """Known nodes (us included, stale ones too) closer to ``key`` than the peer."""
        diff = key ^ self._peer
        return sum(count for bit, count in self._by_peer if diff >> bit & 1)

    def closer_than_us(self, key: NodeId, known_before: float, enough: int) -> int:
        """Live peers (not the peer) closer to ``key`` than us that entered the table
        before ``known_before`` (all of them for ``inf``); counting stops at ``enough``."""
        diff = key ^ self._own
        total = 0
        for bit, joined in self._by_own:
            if diff >> bit & 1:
                if known_before == math.inf:
                    total += len(joined)
                else:
                    total += bisect.bisect_left(joined, known_before)
                if total >= enough:
                    break
        return total


class Scans:
    """The scans waiting to run, resumed in chunks."""

    __slots__ = ("_ctx", "_fanout", "_held", "_schedule", "scans", "wakeup")

    def __init__(
        self,
        ctx: NodeContext,
        held: HeldKeys,
        schedule: RepublishSchedule,
        fanout: StoreFanout,
    ) -> None:
        self._ctx = ctx
        self._held = held
        self._schedule = schedule
        self._fanout = fanout
        self.scans: Fifo[_Scan] = Fifo()
        self.wakeup = math.inf

    def __len__(self) -> int:
        return len(self.scans)

    def clear(self) -> None:
        self.scans.clear()
        self.wakeup = math.inf

    def start(self, peer: Contact, joined: bool, now: float) -> None:
        start = self._start_at(peer.node_id)
        if start is None:
            return
        self.scans.append(_Scan(peer, joined, start))
        self.wakeup = min(self.wakeup, now)

    def _start_at(self, peer: NodeId) -> int | None:
        """The smallest XOR distance (from our id) of a held key for which ``peer`` can be
        among the k closest known nodes; None when there is none.

        Let ``c`` be the prefix length we share with the peer. Every key sharing more than
        ``c`` bits with us is closer to us, and to every node in our deeper buckets, than to
        the peer; if those nodes and we make k, the peer ranks beyond k for all such keys,
        which are exactly the held keys nearer than ``2**(255-c)``.
        """
        cpl = ID_BITS - (self._ctx.node_id ^ peer).bit_length()
        deeper = 1 + sum(size for i, size in self._ctx.table.bucket_sizes().items() if i > cpl)
        start = 0 if deeper < self._ctx.config.k else 1 << (ID_BITS - 1 - cpl)
        return start if self._held.from_distance(start, 1) else None

    def run(self, now: float) -> None:
        budget = self._ctx.config.scan_batch
        while self.scans and budget > 0:
            scan = self.scans[0]
            if scan.joined and scan.peer.node_id not in self._ctx.table:
                self.scans.popleft()
                continue
            keys = self._held.from_distance(scan.next_distance, budget)
            budget -= len(keys)
            if keys:
                scan.next_distance = (keys[-1] ^ self._ctx.node_id) + 1
                if scan.joined:
                    self._handoff_keys(scan.peer, keys, now)
                else:
                    self._repair_keys(scan.peer, keys, now)
            if budget > 0:  # the scan ran out of keys before the budget ran out
                self.scans.popleft()
        self.wakeup = now if self.scans else math.inf

    def _ranker(self, peer: NodeId) -> _Ranker:
        """Counts for ranking many keys against ``peer`` (see :class:`_Ranker`)."""
        own = self._ctx.node_id
        by_peer: dict[int, int] = {(own ^ peer).bit_length(): 1}  # ourselves
        by_own: dict[int, list[float]] = {}
        inf = math.inf
        for entry in self._ctx.table.entries():
            node_id = entry.contact.node_id
            if node_id == peer:
                continue
            bits = (node_id ^ peer).bit_length()
            by_peer[bits] = by_peer.get(bits, 0) + 1
            if not entry.failures:
                bits = (node_id ^ own).bit_length()
                joined = entry.joined  # when it entered the table (Peers.since)
                if joined is None:
                    joined = inf
                group = by_own.get(bits)
                if group is None:
                    by_own[bits] = [joined]
                else:
                    group.append(joined)
        for group in by_own.values():
            group.sort()
        return _Ranker(
            own,
            peer,
            [(bits - 1, count) for bits, count in by_peer.items()],
            [(bits - 1, group) for bits, group in by_own.items()],
        )

    def _handoff_keys(self, peer: Contact, keys: list[NodeId], now: float) -> None:
        """Hand ``peer`` (new in our table) the records among ``keys`` it should hold: those
        for which it is among the k closest we know, if we are among the
        ``handoff_redundancy`` closest likely holders (so not all k holders send the same
        record; peers that joined after the record last reached us are not counted as
        holders, or a crowd of newcomers would silence everyone; a dead holder stops
        counting once a neighbour check finds it stale)."""
        k = self._ctx.config.k
        redundancy = self._ctx.config.handoff_redundancy
        ranker = self._ranker(peer.node_id)
        items: list[StoreItem] = []
        batch = StoreBatch("handoff")
        for key in keys:
            if ranker.closer_than_peer(key) >= k:
                continue
            stored = self._ctx.store.get(key, now)
            if stored is None:
                continue
            if ranker.closer_than_us(key, stored.stored_at, redundancy) < redundancy:
                items.append(StoreItem(peer, key, batch))
        if items:
            batch.outstanding = len(items)
            self._ctx.stats["handoff.records"] += len(items)
            self._fanout.queue.extend(items)

    def _repair_keys(self, dead: Contact, keys: list[NodeId], now: float) -> None:
        """``dead`` failed: re-replicate soon every record among ``keys`` it was among the k
        closest for.

        De-duplicated three ways: one timer per record; the holders take turns by rank (the
        closest live holder goes after ``repair_delay``, the r-th after ``(1 + r)`` delays,
        by when the first one's STORE has reached it and it stands down: a record that
        arrived again after the death was found needs no repair; random jitter alone would
        let every survivor fire at once when they all see the same deaths); and a node
        forces at most one repair per record per ``repair_cooldown``."""
        k = self._ctx.config.k
        delay = self._ctx.config.repair_delay
        ranker = self._ranker(dead.node_id)
        for key in keys:
            if ranker.closer_than_peer(key) >= k:
                continue
            rank = ranker.closer_than_us(key, math.inf, k)
            due = now + delay * (1.0 + rank + 0.5 * self._ctx.rng.random())
            if self._schedule.request_repair(
                key, now, due, self._ctx.config.repair_cooldown, death=True
            ):
                self._ctx.stats["repair.scheduled"] += 1
