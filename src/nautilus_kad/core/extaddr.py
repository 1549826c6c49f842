"""Our external address, decided by a vote of the peers that answered us.

Every answer carries the address its sender saw our request come from. One answer is one
peer's word: it may lie, and a NAT may show different peers different ports. So the voter
counts *networks*, not answers: the observers of one IPv4 /24 (IPv6 /56) hold one vote
between them (their latest), so three colluders in one /24 weigh what one honest peer weighs.

* An address is adopted once at least ``vote_min_observers`` networks agree on it and it has
  ``vote_margin`` times the votes of the runner-up.
* It is replaced only by a candidate that passes the same test, and at most once per
  ``vote_change_interval`` (a NAT that cycles its ports must not make us flap).
* Votes age out after ``vote_window``: a real change wins within two windows (the old votes
  expire in one, while the new ones arrive).

The IP and the full ``ip:port`` are voted on separately: behind an endpoint-dependent NAT
the observers agree on the IP but each sees its own port, so the IP is known and the port is
not (``address`` stays None). The voter is per address family; votes of the other family are
refused (a peer cannot see an IPv6 source on an IPv4 socket).

Sans-I/O: time comes in as ``now``; the voter never asks anyone anything.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from .messages import Address
from .natconfig import NatConfig

_K = TypeVar("_K")


@lru_cache(maxsize=8192)
def ip_family(host: str) -> int | None:
    """4 or 6 for an IP literal (an IPv4-mapped IPv6 address is 4), None for anything else."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return 4
    return ip.version


@lru_cache(maxsize=8192)
def network_of(host: str, prefix_v4: int, prefix_v6: int) -> str | None:
    """The network ``host`` lies in, as text (``"192.0.2.0/24"``); None for a non-IP.

    Unlike :func:`.addresses.subnet_of`, private and local addresses are grouped too: the
    vote must work on a carrier-grade NAT's outside and in test networks, where every
    address is private (reachability is decided by probes, never by how an address looks).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = prefix_v4 if ip.version == 4 else prefix_v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@lru_cache(maxsize=8192)
def _votable(host: str) -> bool:
    """Whether ``host`` could be somebody's external IP (not unspecified or multicast)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255")


@dataclass(frozen=True, slots=True)
class AddressChange:
    """The adopted external address changed (``old_*`` None: the first adoption)."""

    family: int
    old_ip: str | None
    new_ip: str | None
    old_address: Address | None
    new_address: Address | None
    at: float

    @property
    def first(self) -> bool:
        """Nothing had been adopted before."""
        return self.old_ip is None and self.old_address is None

    @property
    def moved(self) -> bool:
        """A real change: something adopted before is replaced (not just learnt)."""
        ip_moved = self.old_ip is not None and self.old_ip != self.new_ip
        port_moved = self.old_address is not None and self.old_address != self.new_address
        return ip_moved or port_moved


class ExternalAddressVoter:
    """The vote for one address family (4 or 6)."""

    def __init__(self, config: NatConfig, family: int) -> None:
        if family not in (4, 6):
            raise ValueError("family is 4 or 6")
        self.config = config
        self.family = family
        self.ip: str | None = None
        """The adopted external IP."""
        self.address: Address | None = None
        """The adopted external ``(ip, port)``; None while the port is not agreed on."""
        self.changed_at: float | None = None
        """When :attr:`ip` or :attr:`address` last changed (None: never adopted)."""
        self.stats: Counter[str] = Counter()
        self.version = 0
        """Bumped whenever the votes change (what :meth:`observations` shows then depends
        only on time): lets the NAT class be re-derived only when its inputs moved."""
        self._votes: dict[str, tuple[Address, float, str]] = {}
        """Observer network -> (what it saw, when, the observer's IP), least recent first
        (a plain dict keeps insertion order, and a re-cast vote is popped and re-inserted:
        an ``OrderedDict`` costs twice the memory per key, and every simulated node holds up
        to ``vote_max_observers`` votes)."""

    # --- input ---------------------------------------------------------------------------

    def vote(self, observer: Address, observed: Address, now: float) -> AddressChange | None:
        """``observer`` answered our request and says it saw us at ``observed``.

        Only answers to our own requests may be passed here (their sender echoed our random
        transaction id, so the observer's address is not forged). Returns the change the
        vote caused, if any.
        """
        cfg = self.config
        votes = self._votes
        group = network_of(observer[0], cfg.vote_prefix_v4, cfg.vote_prefix_v6)
        previous = votes.get(group) if group is not None else None
        if (
            previous is not None
            and previous[0] == observed
            and now - previous[1] < cfg.vote_window / 4
        ):
            # The same word again, soon: nothing to decide (every answer carries a vote, so
            # this is the common case, checked first; the vote's time is refreshed by a later
            # repeat). What it repeats passed the checks below when it was counted, and its
            # observer's network names the family (a /24 is never a /56).
            self.stats["votes.repeated"] += 1
            return None
        host, port = observed
        if ip_family(observer[0]) != self.family or ip_family(host) != self.family:
            self.stats["votes.rejected.family"] += 1
            return None
        if not (_votable(host) and 1 <= port <= 65535):
            self.stats["votes.rejected.invalid"] += 1
            return None
        if group is None:  # pragma: no cover - ip_family accepted it
            self.stats["votes.rejected.invalid"] += 1
            return None
        votes.pop(group, None)
        if previous is not None and previous[0] != observed:
            self.stats["votes.replaced"] += 1
        if observed == self.address:
            observed = self.address  # most votes agree: one tuple, not one per vote
        votes[group] = (observed, now, observer[0])
        self.version += 1
        if len(votes) > cfg.vote_max_observers:
            del votes[next(iter(votes))]  # the least recent
        self.stats["votes.counted"] += 1
        return self.decide(now)

    def expire(self, now: float) -> None:
        """Forget the votes older than the window."""
        horizon = now - self.config.vote_window
        votes = self._votes
        stale = [group for group, (_, when, _) in votes.items() if when < horizon]
        for group in stale:
            del votes[group]
        if stale:
            self.version += 1

    # --- the decision --------------------------------------------------------------------

    def decide(self, now: float) -> AddressChange | None:
        """Apply the adoption rules to the current votes; the change, if any."""
        self.expire(now)
        cfg = self.config
        may_change = self.changed_at is None or now - self.changed_at >= cfg.vote_change_interval
        observed = [seen for seen, _, _ in self._votes.values()]
        new_ip = self.ip
        ip_winner = _winner(Counter(host for host, _ in observed), cfg)
        if ip_winner is not None and ip_winner != self.ip and (self.ip is None or may_change):
            new_ip = ip_winner
        new_address = self.address if new_ip == self.ip else None
        if new_ip is not None:
            winner = _winner(Counter(seen for seen in observed if seen[0] == new_ip), cfg)
            # Learning the port of an adopted IP is no change; replacing a port is one.
            if winner is not None and winner != new_address and (new_address is None or may_change):
                new_address = winner
        if new_ip == self.ip and new_address == self.address:
            return None
        change = AddressChange(self.family, self.ip, new_ip, self.address, new_address, now)
        if change.moved or self.changed_at is None:
            self.changed_at = now
        self.ip = new_ip
        self.address = new_address
        self.stats["address.changes" if change.moved else "address.adopted"] += 1
        return change

    # --- views ---------------------------------------------------------------------------

    def observations(self, now: float) -> list[tuple[str, Address]]:
        """(observer IP, what it saw) of every live vote, oldest first."""
        horizon = now - self.config.vote_window
        return [(who, seen) for seen, when, who in self._votes.values() if when >= horizon]

    def oldest_live(self, now: float) -> float:
        """When the oldest vote :meth:`observations` shows at ``now`` was cast (inf: none).
        While no vote comes or goes (:attr:`version` unchanged), :meth:`observations` shows
        the same at a later ``t`` as long as that vote is still live then
        (``oldest >= t - vote_window``, the same test it applies)."""
        horizon = now - self.config.vote_window
        live = [when for _, when, _ in self._votes.values() if when >= horizon]
        return min(live, default=math.inf)

    def __len__(self) -> int:
        """Observer networks currently holding a vote (live or not yet expired)."""
        return len(self._votes)


def _winner(counts: Counter[_K], cfg: NatConfig) -> _K | None:
    """The candidate with at least ``vote_min_observers`` votes and ``vote_margin`` times the
    runner-up's, or None."""
    if not counts:
        return None
    ranked = counts.most_common(2)
    top, votes = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0
    if votes >= cfg.vote_min_observers and votes >= cfg.vote_margin * second:
        return top
    return None
