"""Per-source-IP token buckets: the second check every datagram passes, after its size.

A public node is flooded from the day it is reachable. Decoding a datagram and checking its
signature cost tens of microseconds; a dictionary lookup and a little arithmetic cost well
under one. So before anything else is spent on a datagram, its source IP must have a token:
each IP's bucket holds up to ``rate_burst`` tokens and refills at ``rate_limit`` per second.
A datagram that finds its bucket empty is dropped. An IP that keeps sending while empty
(another ``rate_burst`` datagrams) is no longer throttled but ignored altogether for
``rate_penalty`` seconds: a flood then costs the node one lookup per datagram.

Answers to our own requests are paid for in advance: each request we send to an IP puts one
token in its bucket (up to twice the burst), so a peer we ask a lot (a lookup, a handoff of
many records) is never throttled for answering; the limit bites on what nobody asked for.

Memory is bounded: at most ``rate_limit_sources`` buckets, the least recently heard from
forgotten first. A flooder keeps its own bucket fresh, so it is never the one forgotten;
forgetting a quiet IP loses nothing (its bucket would have refilled).

Loopback and private sources are exempt unless ``rate_limit_local`` is set: a loopback or
private test network puts every node behind one address.
"""

from __future__ import annotations

from collections import OrderedDict

from .addresses import is_public
from .config import KadConfig

RATE_LIMITED = "rate_limited"
"""Drop reason: the source's bucket was empty."""
BLOCKED = "blocked"
"""Drop reason: the source is being ignored for ``rate_penalty`` seconds."""


class _Bucket:
    __slots__ = ("blocked_until", "overdraft", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.overdraft = 0
        """Datagrams dropped since the bucket last had a token."""
        self.blocked_until = 0.0


class SourceRateLimiter:
    """Admits or drops datagrams by their source IP (sans-I/O: time comes in as ``now``)."""

    def __init__(self, config: KadConfig) -> None:
        self.rate = config.rate_limit
        self.burst = float(config.rate_burst)
        self.penalty = config.rate_penalty
        self.capacity = config.rate_limit_sources
        self.police_local = config.rate_limit_local
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.blocks = 0
        """How many times an IP was put on the ignore list."""

    def __len__(self) -> int:
        """Source IPs currently tracked."""
        return len(self._buckets)

    def blocked(self, now: float) -> int:
        """Source IPs being ignored at ``now``."""
        return sum(1 for b in self._buckets.values() if b.blocked_until > now)

    def expect(self, host: str) -> None:
        """We sent ``host`` a request: its answer will not cost it a token."""
        bucket = self._buckets.get(host)
        if bucket is not None and bucket.blocked_until == 0.0:
            bucket.tokens = min(2 * self.burst, bucket.tokens + 1.0)

    def admit(self, host: str, now: float) -> str | None:
        """None if a datagram from ``host`` may go on; else why it is dropped."""
        if self.rate <= 0:
            return None
        buckets = self._buckets
        bucket = buckets.get(host)
        if bucket is None:
            if not self.police_local and not is_public(host):
                return None
            bucket = _Bucket(self.burst, now)
            buckets[host] = bucket
            if len(buckets) > self.capacity:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(host)
            if bucket.blocked_until > now:
                return BLOCKED
            elapsed = now - bucket.updated
            if elapsed > 0:
                bucket.blocked_until = 0.0
                if bucket.tokens < self.burst:
                    bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.overdraft = 0
            return None
        bucket.overdraft += 1
        if bucket.overdraft >= self.burst and self.penalty > 0:
            bucket.blocked_until = now + self.penalty
            bucket.overdraft = 0
            bucket.tokens = 0.0
            bucket.updated = now + self.penalty  # no refill while ignored
            self.blocks += 1
        return RATE_LIMITED
