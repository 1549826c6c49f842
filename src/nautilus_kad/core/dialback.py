"""Who may be asked to probe whom: the rules of the reachability test, for all three roles.

A (requester) sends DIALBACK to a helper B; B picks a prober C from its routing table and
sends it PROBE_RELAY naming *the address B saw A's request come from*; C sends A a PROBE
there (see :mod:`.natwire`). The rules that keep this from being a weapon:

* **Helper (B).** Probes only ever go to the requester's own observed address: a DIALBACK
  names no address at all. B serves ``serve_per_requester`` requests per requester IP and
  ``serve_global`` in total per ``serve_period``; it picks C among verified servers whose IP
  is neither A's nor its own. Its answer is no larger than the request (the codec pads).
* **Prober (C).** The one message that names an address is PROBE_RELAY, and C accepts it
  only from a node in its own routing table (a server that proved its address) at the
  address the table holds, never for the relayer's own IP or C's own, and within the same
  limits per relayer IP, per *target* IP (many helpers cannot aim many probers at one
  victim) and in total. The probe copies together cost no more bytes than the PROBE_RELAY
  that caused them: a relayer gains nothing it could not do by sending directly.
* **Requester (A).** A round counts as a success only if a PROBE with its nonce arrives from
  an IP that A has not sent anything to for ``contacted_window`` (a different port on a
  contacted IP passes an address-restricted NAT and proves nothing), counting the time since
  that IP last wrote to A while it was still within the window (NATs refresh a hole on
  inbound traffic too: a prober probing again and again keeps open the hole A's own
  datagram made). A round whose helper
  never confirmed is inconclusive, not a failure: only a probe that was sent and did not
  arrive is evidence of unreachability.

Sans-I/O: randomness comes from an injected ``random.Random``, time as ``now``.
"""

from __future__ import annotations

import enum
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .messages import Address
from .natconfig import NatConfig
from .natwire import NONCE_BYTES, ProbeStatus


class ServeLimiter:
    """Fixed-window counts per key and in total: at most ``per_key`` and ``total`` grants
    per ``period``. At most ``capacity`` keys are remembered (oldest window forgotten first;
    forgetting one can only grant what its window would have after a period anyway)."""

    def __init__(self, per_key: int, total: int, period: float, capacity: int) -> None:
        self.per_key = per_key
        self.total = total
        self.period = period
        self.capacity = capacity
        self._keys: dict[str, tuple[float, int]] = {}
        """Key -> (window start, grants), least recently granted first (a plain dict keeps
        insertion order: half an ``OrderedDict``'s size, and every node holds two; keys
        are only added on a grant, at most ``total`` per period, so evicting the first key
        never walks far)."""
        self._window = (-math.inf, 0)

    def allow(self, keys: Sequence[str], now: float) -> bool:
        """Grant one request charged to every key in ``keys`` (and the total), or refuse
        it (charging nothing)."""
        start, used = self._window
        if now - start >= self.period:
            start, used = now, 0
        if used >= self.total:
            self._window = (start, used)
            return False
        counts = []
        for key in keys:
            k_start, k_used = self._keys.get(key, (now, 0))
            if now - k_start >= self.period:
                k_start, k_used = now, 0
            if k_used >= self.per_key:
                return False
            counts.append((key, k_start, k_used))
        for key, k_start, k_used in counts:
            self._keys.pop(key, None)
            self._keys[key] = (k_start, k_used + 1)
            if len(self._keys) > self.capacity:
                del self._keys[next(iter(self._keys))]
        self._window = (start, used + 1)
        return True

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, slots=True)
class HelperDecision:
    status: ProbeStatus
    prober: Address | None = None
    target: Address | None = None
    """Always the requester's observed address when a prober was chosen."""


class Helper:
    """Role B: decides whether and through whom to arrange a probe."""

    def __init__(self, config: NatConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.limiter = ServeLimiter(
            config.serve_per_requester,
            config.serve_global,
            config.serve_period,
            config.serve_max_requesters,
        )
        self.stats: Counter[str] = Counter()

    def on_dialback(
        self, requester: Address, servers: Sequence[Address], own_ip: str | None, now: float
    ) -> HelperDecision:
        """A DIALBACK arrived from ``requester`` (its observed source); ``servers`` are the
        verified servers of our table that could probe."""
        if not self.limiter.allow((requester[0],), now):
            self.stats["dialback.refused.rate"] += 1
            return HelperDecision(ProbeStatus.RATE_LIMITED)
        candidates = [s for s in servers if s[0] != requester[0] and s[0] != own_ip]
        if not candidates:
            self.stats["dialback.refused.no_prober"] += 1
            return HelperDecision(ProbeStatus.NO_PROBER)
        self.stats["dialback.arranged"] += 1
        return HelperDecision(ProbeStatus.ARRANGED, self.rng.choice(candidates), requester)


@dataclass(frozen=True, slots=True)
class ProberDecision:
    status: ProbeStatus
    copies: int = 0


class Prober:
    """Role C: decides whether to probe the address a relayer names, and how often."""

    def __init__(self, config: NatConfig) -> None:
        self.config = config
        self.limiter = ServeLimiter(
            config.serve_per_requester,
            config.serve_global,
            config.serve_period,
            config.serve_max_requesters,
        )
        self.stats: Counter[str] = Counter()

    def on_relay(
        self,
        relayer: Address,
        relayer_is_server: bool,
        target: Address,
        own: Address | None,
        request_size: int,
        probe_size: int,
        now: float,
    ) -> ProberDecision:
        """A PROBE_RELAY of ``request_size`` bytes from ``relayer`` names ``target``;
        ``relayer_is_server``: the relayer is in our routing table at exactly that address.
        A probe datagram costs ``probe_size`` bytes."""
        if not relayer_is_server:
            self.stats["relay.refused.unknown"] += 1
            return ProberDecision(ProbeStatus.REFUSED)
        if target[0] == relayer[0] or (own is not None and target[0] == own[0]):
            self.stats["relay.refused.target"] += 1
            return ProberDecision(ProbeStatus.REFUSED)
        copies = min(self.config.probe_copies, request_size // max(1, probe_size))
        if copies < 1:
            self.stats["relay.refused.size"] += 1
            return ProberDecision(ProbeStatus.REFUSED)
        if not self.limiter.allow((relayer[0], "target " + target[0]), now):
            self.stats["relay.refused.rate"] += 1
            return ProberDecision(ProbeStatus.RATE_LIMITED)
        self.stats["relay.probed"] += 1
        return ProberDecision(ProbeStatus.ARRANGED, copies)


class ContactedIps:
    """The IPs we sent anything to, and when last (bounded; oldest forgotten first).

    A probe from such an IP may have come through a hole our own traffic opened."""

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self._last: OrderedDict[str, float] = OrderedDict()

    def sent(self, ip: str, now: float) -> None:
        last = self._last
        if ip in last:
            last.move_to_end(ip)
        last[ip] = now
        if len(last) > self.capacity:
            last.popitem(last=False)

    def received(self, ip: str, now: float) -> None:
        """A datagram came from ``ip``. Most NATs refresh a mapping's filter on inbound
        traffic too (RFC 4787 §4.3, inbound refresh), so a hole our own datagram opened stays
        open while the other side keeps writing: an IP still within the window stays in it
        for another window. An IP outside it is left alone: its hole has closed, and what it
        sends now is unsolicited."""
        last = self._last
        when = last.get(ip)
        if when is not None and now - when < self.window:
            last.move_to_end(ip)
            last[ip] = now

    def clear_at(self, ip: str) -> float:
        """When ``ip`` stops counting as contacted (at once for an IP not within the window;
        inf while IPs forgotten for capacity may still be in it)."""
        when = self._last.get(ip)
        if when is not None:
            return when + self.window
        return self._forgotten_until

    def last(self, ip: str) -> float | None:
        """When we last sent to ``ip`` (None: not remembered)."""
        return self._last.get(ip)

    def recently(self, ip: str, now: float) -> bool:
        """Whether we sent to ``ip`` within the window. An IP forgotten for capacity counts
        as contacted while anything forgotten might still be in the window."""
        when = self._last.get(ip)
        if when is not None:
            return now - when < self.window
        return self._forgotten_until > now

    @property
    def _forgotten_until(self) -> float:
        if len(self._last) < self.capacity:
            return -math.inf
        oldest = next(iter(self._last.values()))
        return oldest + self.window

    def __len__(self) -> int:
        return len(self._last)


class Verdict(enum.Enum):
    SUCCESS = "success"
    TAINTED = "tainted"
    """The probe came from an IP we had contacted: proves nothing."""
    UNKNOWN = "unknown"
    """No round of ours has that nonce (forged, late, or a duplicate copy)."""


@dataclass(slots=True)
class Round:
    nonce: bytes
    helper: Address
    epoch: int
    deadline: float
    arranged: bool = False
    tainted: bool = False
    """A probe came, from an IP we had contacted: it got in, but proves nothing either way."""


class ProbeRounds:
    """Role A: the rounds in flight, by nonce."""

    def __init__(self, config: NatConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.rounds: dict[bytes, Round] = {}
        self.stats: Counter[str] = Counter()
        self.tainted_in_row = 0
        """Rounds in a row whose probe came from an IP we had contacted (no success or
        failure between them): many mean the probers around us are all ones we talk to,
        and the next rounds wait (see :meth:`.NatState.hold_off`)."""

    def start(self, helper: Address, epoch: int, now: float, answer_timeout: float) -> bytes:
        """A new round through ``helper``: the nonce for its DIALBACK. Until the helper
        answers, the round lasts ``answer_timeout``."""
        nonce = self.rng.randbytes(NONCE_BYTES)
        self.rounds[nonce] = Round(nonce, helper, epoch, now + answer_timeout)
        self.stats["probes.requested"] += 1
        return nonce

    def helpers(self) -> set[Address]:
        """Helpers with a round in flight (ask each at most once at a time)."""
        return {r.helper for r in self.rounds.values()}

    def answered(self, nonce: bytes, status: ProbeStatus, now: float) -> Round | None:
        """The helper answered. ARRANGED: the round now waits ``probe_timeout`` for the
        probe. Anything else ends it inconclusively (returned, to report)."""
        round_ = self.rounds.get(nonce)
        if round_ is None:
            return None
        if status is ProbeStatus.ARRANGED:
            round_.arranged = True
            round_.deadline = now + self.config.probe_timeout
            self.stats["probes.arranged"] += 1
            return None
        self.stats["probes.refused"] += 1
        return self.rounds.pop(nonce)

    def probe(
        self, nonce: bytes, source: Address, contacted: ContactedIps, now: float
    ) -> tuple[Verdict, Round | None]:
        """A PROBE arrived from ``source``."""
        round_ = self.rounds.get(nonce)
        if round_ is None:
            self.stats["probes.unmatched"] += 1
            return Verdict.UNKNOWN, None
        if source[0] == round_.helper[0] or contacted.recently(source[0], now):
            # Proves nothing; the round goes on (a proper copy may still come).
            self.stats["probes.tainted"] += 1
            self.tainted_in_row += not round_.tainted  # once per round (copies come twice)
            round_.tainted = True
            return Verdict.TAINTED, round_
        del self.rounds[nonce]
        self.stats["probes.answered"] += 1
        self.tainted_in_row = 0
        return Verdict.SUCCESS, round_

    def expired(self, now: float) -> list[Round]:
        """Rounds past their deadline, removed: ``arranged`` ones without a tainted probe
        failed (the probe was sent and did not arrive), the others are inconclusive."""
        done = [r for r in self.rounds.values() if r.deadline <= now]
        for round_ in done:
            del self.rounds[round_.nonce]
            if not round_.arranged:
                self.stats["probes.unanswered"] += 1
            else:
                self.stats["probes.timed_out"] += 1
                if not round_.tainted:
                    self.tainted_in_row = 0  # a clean prober's probe did not get in
        return done

    def forget_epoch(self, epoch: int) -> None:
        """Drop the rounds started before an address change."""
        for nonce in [n for n, r in self.rounds.items() if r.epoch < epoch]:
            del self.rounds[nonce]

    def timer(self) -> float:
        if not self.rounds:  # the usual case, asked after every datagram
            return math.inf
        return min(r.deadline for r in self.rounds.values())
