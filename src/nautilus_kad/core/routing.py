"""The k-bucket routing table.

Pure bookkeeping: it never sends anything. When it wants a peer checked it *returns* that peer
and the engine decides whether to ping it. Rules (DESIGN §5):

* only contacts that answered one of our requests are added (:meth:`RoutingTable.observe`);
* a full bucket keeps its live entries; newcomers wait in a bounded replacement cache, and the
  least recently seen entry is offered for a ping when it has been idle a while;
* a failed entry is replaced at once by the freshest verified replacement, or removed after
  ``max_failures`` consecutive failures when no replacement exists;
* every entry carries an SRTT/RTTVAR estimate (RFC 6298) that sets its request timeout;
* diversity: at most ``max_per_subnet_bucket`` entries of one /24 (IPv6: /48) in a bucket and
  ``max_per_subnet_table`` in the table, so whoever controls one subnet cannot fill a bucket
  (an eclipse) however many ids it makes up. Public addresses only: loopback and private test
  networks put every node in one subnet. Contacts over a limit are refused outright, not kept
  as spares, so no failure can promote them later.

Buckets are created on first use: a 10 000-node simulation holds 10 000 tables, and most of the
256 possible buckets of each stay empty forever. A bucket and its entries are stored compactly
by core/buckets.py; the join times handoff ranks holders by, by core/jointimes.py.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterator

from .addresses import subnet_of
from .buckets import Entry, KBucket, RttEstimator
from .config import KadConfig
from .ids import ID_BITS, NodeId
from .messages import Contact


class RoutingTable:
    """Kademlia routing table of one node."""

    def __init__(self, own_id: NodeId, config: KadConfig, now: float = 0.0) -> None:
        self.own_id = own_id
        self.config = config
        self._created = now
        self._buckets: dict[int, KBucket] = {}
        self._indices: list[int] = []
        """The keys of ``_buckets``, sorted (buckets are only ever added)."""
        self._size = 0
        """Entries in the table (a node id's bucket follows from the id: no index is kept)."""
        self._left: dict[NodeId, float] = {}
        """Join times of peers that left the table unreported (see :class:`JoinTimes`)."""
        self._joined = 0
        """Entries holding a join time."""
        self._global_rtt = RttEstimator()
        self._subnets: Counter[str] = Counter()
        """Entries per public /24 or /48 in the whole table."""
        self.refused_subnet = 0
        """Verified contacts refused by the subnet limits (a metric)."""
        self.interner: Callable[[Contact], Contact] | None = None
        """Set by a simulator: returns an equal contact that all its nodes share (contacts
        are immutable); the table keeps that one. Real nodes keep their own."""
        self.rtt_observer: Callable[[float], None] | None = None
        """Called with every round-trip time sampled (a driver's RTT histogram); the table
        only calls it, so the core stays free of any metrics library."""

    # --- inspection ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, int) and self._locate(node_id) is not None

    def __iter__(self) -> Iterator[Contact]:
        for index in sorted(self._buckets):
            for entry in self._buckets[index].entries.values():
                yield entry.contact

    def entries(self) -> Iterator[Entry]:
        """Every entry (stale ones included), bucket by bucket."""
        for bucket in self._buckets.values():
            yield from bucket.entries.values()

    def get(self, node_id: NodeId) -> Entry | None:
        bucket = self._buckets.get(ID_BITS - (self.own_id ^ node_id).bit_length())
        return None if bucket is None else bucket.entries.get(node_id)

    def canonical(self, node_id: NodeId) -> NodeId:
        """The table's own copy of ``node_id`` if it holds it, else ``node_id``: callers that
        keep an id share the table's instead of keeping an equal one."""
        entry = self.get(node_id)
        return node_id if entry is None else entry.contact.node_id

    def _locate(self, node_id: int) -> int | None:
        """The index of the bucket holding ``node_id`` as an entry, or None."""
        index = ID_BITS - (self.own_id ^ node_id).bit_length()
        bucket = self._buckets.get(index)
        return index if bucket is not None and node_id in bucket.entries else None

    def bucket_sizes(self) -> dict[int, int]:
        """Non-empty buckets by index: how full the table is, for displays and tests."""
        return {i: len(b) for i, b in sorted(self._buckets.items()) if b.entries}

    def buckets(self) -> Iterator[tuple[int, list[Entry], int]]:
        """Each non-empty bucket (or one with spares): its index, its entries from least to
        most recently seen, and how many replacements wait in its cache. For displays."""
        for index in sorted(self._buckets):
            bucket = self._buckets[index]
            if bucket.entries or bucket.replacements:
                yield index, list(bucket.entries.values()), len(bucket.replacements)

    def has_room_for(self, node_id: NodeId) -> bool:
        """Whether ``node_id`` could enter the table now (its bucket has a free or stale
        slot), so verifying it is worth a PING."""
        bucket = self._buckets.get(self.bucket_of(node_id))
        if bucket is None or len(bucket.entries) < self.config.k:
            return True
        return bucket.stale > 0  # a stale entry would give way (see observe)

    def bucket_of(self, node_id: int) -> int:
        return ID_BITS - (self.own_id ^ node_id).bit_length()

    def _bucket(self, index: int, now: float) -> KBucket:
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = KBucket(now)
            bisect.insort(self._indices, index)
        return bucket

    # --- updates -----------------------------------------------------------------------

    def observe(self, contact: Contact, now: float) -> tuple[bool, Contact | None]:
        """Record that ``contact`` answered one of our requests.

        Returns ``(added, to_ping)``: whether it entered the table, and an entry of a full
        bucket whose liveness should be checked with a PING (its failure would make room).
        """
        node_id = contact.node_id
        if node_id == self.own_id:
            return False, None
        index = self.bucket_of(node_id)
        bucket = self._bucket(index, now)
        bucket.last_touched = now
        entry = bucket.entries.get(node_id)
        if entry is not None:
            # A signed answer proves the key holder is at this address: follow it if it moved
            # (unless the move would break the subnet limits; it stays where it was).
            if entry.contact.host != contact.host and not self._subnet_allows(
                bucket, contact.host, entry.contact.host
            ):
                self.refused_subnet += 1
                return False, None
            old = entry.contact
            self._count_subnet(old.host, -1)
            self._count_subnet(contact.host, 1)
            if old.port != contact.port or old.host != contact.host:  # else keep the one
                entry.contact = contact if self.interner is None else self.interner(contact)
            entry._times[entry._at] = now  # last_seen, without the property call
            if entry.failures:
                entry.failures = 0
                bucket.stale -= 1
            entries = bucket.entries
            entries[node_id] = entries.pop(node_id)  # most recently seen last
            return False, None
        if not self._subnet_allows(bucket, contact.host):
            self.refused_subnet += 1
            return False, None
        if self.interner is not None:
            contact = self.interner(contact)
        if len(bucket.entries) < self.config.k:
            self._insert(bucket, index, contact, now)
            return True, None
        # Full bucket: a stale entry (the least recently seen) gives way to a verified
        # newcomer at once.
        if bucket.stale:
            for stale_id, stale in bucket.entries.items():
                if stale.failures:  # is_stale, without a property call per entry
                    self._evict(bucket, stale_id)
                    self._insert(bucket, index, contact, now)
                    return True, None
        replacements = bucket.replacements
        replacements.pop(node_id, None)
        replacements[node_id] = contact  # freshest last
        if len(replacements) > self.config.replacement_cache_size:
            del replacements[next(iter(replacements))]
        oldest = next(iter(bucket.entries.values()))
        if now - oldest.last_seen >= self.config.ping_after_idle:
            return False, oldest.contact
        return False, None

    def _insert(self, bucket: KBucket, index: int, contact: Contact, now: float) -> None:
        entry = Entry(contact, now, bucket.times, bucket.slot())
        bucket.entries[contact.node_id] = entry
        if self._left:  # a peer back in the table finds the join time it left with
            joined = self._left.pop(contact.node_id, None)
            if joined is not None:
                entry.joined = joined
                self._joined += 1
        bucket.replacements.pop(contact.node_id, None)
        self._size += 1
        self._count_subnet(contact.host, 1)

    def _evict(self, bucket: KBucket, node_id: NodeId) -> None:
        entry = bucket.entries.pop(node_id)
        joined = entry.joined
        if joined is not None:  # kept until reported gone (see JoinTimes)
            self._joined -= 1
            self._left[node_id] = joined
        bucket.release(entry)
        self._size -= 1
        if entry.failures:
            bucket.stale -= 1
        self._count_subnet(entry.contact.host, -1)

    # --- diversity ---------------------------------------------------------------------

    def _count_subnet(self, host: str, delta: int) -> None:
        if not self.config.subnet_limits:
            return
        subnet = subnet_of(host)
        if subnet is not None:
            count = self._subnets[subnet] + delta
            if count > 0:
                self._subnets[subnet] = count
            else:
                del self._subnets[subnet]

    def _subnet_allows(self, bucket: KBucket, host: str, leaving: str | None = None) -> bool:
        """Whether one more entry at ``host`` keeps the bucket and the table within the
        subnet limits (``leaving``: the host of an entry that moves to ``host``)."""
        if not self.config.subnet_limits:
            return True
        subnet = subnet_of(host)
        if subnet is None:
            return True
        credit = 1 if leaving is not None and subnet_of(leaving) == subnet else 0
        if self._subnets[subnet] - credit >= self.config.max_per_subnet_table:
            return False
        in_bucket = sum(1 for e in bucket.entries.values() if subnet_of(e.contact.host) == subnet)
        return in_bucket - credit < self.config.max_per_subnet_bucket

    def record_failure(self, node_id: NodeId) -> Contact | None:
        """A request to ``node_id`` went unanswered.

        Returns the contact removed from the table, if the failure removed it: replaced by the
        freshest verified spare at once, or dropped after ``max_failures`` in a row.
        """
        index = self._locate(node_id)
        if index is None:
            return None
        bucket = self._buckets[index]
        entry = bucket.entries[node_id]
        if not entry.failures:
            bucket.stale += 1
        entry.failures += 1
        for spare_id in reversed(bucket.replacements):  # the freshest spare that fits
            spare = bucket.replacements[spare_id]
            if self._subnet_allows(bucket, spare.host, entry.contact.host):
                self._evict(bucket, node_id)
                # Inserted with last_seen = the stale entry's: the spare's own proof is older.
                self._insert(bucket, index, spare, entry.last_seen)
                return entry.contact
        if entry.failures >= self.config.max_failures:
            self._evict(bucket, node_id)
            return entry.contact
        return None

    def depart(self, node_id: NodeId) -> Contact | None:
        """``node_id`` said it is leaving (a clean shutdown): out of the table at once, its
        place taken by the freshest verified spare that fits. Returns its contact if it was
        in the table."""
        index = self._locate(node_id)
        if index is None:
            self._drop_spare(node_id)
            return None
        bucket = self._buckets[index]
        entry = bucket.entries[node_id]
        self._evict(bucket, node_id)
        for spare_id in reversed(bucket.replacements):
            spare = bucket.replacements[spare_id]
            if self._subnet_allows(bucket, spare.host):
                self._insert(bucket, index, spare, entry.last_seen)
                break
        return entry.contact

    def _drop_spare(self, node_id: NodeId) -> None:
        bucket = self._buckets.get(self.bucket_of(node_id))
        if bucket is not None:
            bucket.replacements.pop(node_id, None)

    def remove(self, node_id: NodeId) -> bool:
        index = self._locate(node_id)
        if index is None:
            return False
        self._evict(self._buckets[index], node_id)
        return True

    # --- round-trip times ----------------------------------------------------------------

    def record_rtt(self, node_id: NodeId, rtt: float) -> None:
        self._global_rtt.sample(rtt)
        if self.rtt_observer is not None:
            self.rtt_observer(rtt)
        entry = self.get(node_id)
        if entry is not None:
            entry.sample(rtt)

    def soft_timeout(self, node_id: NodeId) -> float:
        """How long a lookup waits for this peer before giving its slot to another."""
        cfg = self.config
        entry = self.get(node_id)
        if entry is not None:
            own = entry.timeout(cfg.min_soft_timeout, cfg.max_soft_timeout)
            if own is not None:
                return own
        general = self._global_rtt.timeout(cfg.min_soft_timeout, cfg.max_soft_timeout)
        if general is not None:
            # A stranger is judged by the network at large, with room for a slower path.
            return min(cfg.max_soft_timeout, 2 * general)
        return min(cfg.max_soft_timeout, max(cfg.min_soft_timeout, 2 * cfg.initial_rtt))

    # --- queries -----------------------------------------------------------------------

    def closest(self, target: int, count: int, *, include_stale: bool = True) -> list[Contact]:
        """The ``count`` known contacts closest to ``target`` by XOR distance.

        Walks buckets in distance order instead of sorting the whole table. With ``i`` the
        target's bucket and ``t = own_id ^ target``: bucket ``i`` holds the nearest contacts;
        then come the deeper buckets ``j > i``, whose distances agree with ``t`` on the ``j``
        leading bits and differ from it at bit ``j`` (counting from the top), so those where
        ``t`` has a 1 at bit ``j`` come first, shallowest first, then the others, deepest
        first; then buckets ``i-1, i-2, … 0`` in turn. Each bucket is sorted on its own, and
        only until ``count`` contacts are found.
        """
        if not self._size or count <= 0:
            return []
        buckets = self._buckets
        t = self.own_id ^ target
        key = target.__xor__  # C-level sort key: no Python lambda per element
        result: list[Contact] = []
        for j in self._bucket_order(ID_BITS - t.bit_length(), t):
            entries = buckets[j].entries
            if not entries:
                continue
            if count - len(result) == 1 and len(entries) > 1:
                # One more is all we need (a typical answer: k from one bucket plus one):
                # the nearest of this bucket, if usable, without sorting the rest.
                # (the smallest distance, mapped back to its id: C-level, no key calls)
                entry = entries[min(map(key, entries)) ^ target]  # type: ignore[index]
                if include_stale or not entry.failures:
                    result.append(entry.contact)
                    return result
            ids = sorted(entries, key=key) if len(entries) > 1 else list(entries)
            if include_stale:
                result += [entries[node_id].contact for node_id in ids]
            else:
                result += [e.contact for e in map(entries.__getitem__, ids) if not e.failures]
            if count <= len(result):
                return result[:count]
        return result

    def _bucket_order(self, i: int, t: int) -> Iterator[int]:
        """Existing bucket indices in XOR-distance order from a target in bucket ``i`` with
        ``t = own_id ^ target`` (see :meth:`closest`), produced lazily: most queries stop
        after a bucket or two."""
        indices = self._indices
        split = bisect.bisect_right(indices, i)
        below = split
        if split and indices[split - 1] == i:
            below -= 1
            yield i
        top = ID_BITS - 1
        later: list[int] = []
        for j in indices[split:]:  # deeper buckets, shallowest first
            if (t >> (top - j)) & 1:
                yield j
            else:
                later.append(j)
        yield from reversed(later)
        for n in range(below - 1, -1, -1):
            yield indices[n]

    # --- refresh -----------------------------------------------------------------------

    def touch(self, target: int, now: float) -> None:
        """A lookup for ``target`` ran: its bucket counts as refreshed."""
        if target == self.own_id:
            return
        self._bucket(self.bucket_of(target), now).last_touched = now

    def buckets_to_refresh(self, now: float) -> list[int]:
        """Bucket indices idle for ``refresh_interval``, from 0 up to the deepest populated
        one (deeper buckets can only fill through our own-id lookup)."""
        if not self._size:
            return []
        deepest = max(i for i, b in self._buckets.items() if b.entries)
        due = []
        for index in range(deepest + 1):
            bucket = self._buckets.get(index)
            touched = bucket.last_touched if bucket is not None else self._created
            if now - touched >= self.config.refresh_interval:
                due.append(index)
        return due
