"""A node's whole NAT picture: external address votes, NAT class, reachability mode, probe
rounds, and the dial-back services it offers others. One object per node, sans-I/O.

The engine feeds it (:meth:`NatState.sent_to` for every datagram it sends,
:meth:`NatState.observed` for every answer to its own requests, the DIALBACK / PROBE_RELAY /
PROBE traffic of :mod:`.natwire`) and asks it what to do (:meth:`NatState.rounds_wanted`,
:meth:`NatState.timer`). What changed is queued in :attr:`NatState.changes` for the driver
to log; :meth:`NatState.snapshot` is ``node.reachability``.

Only the address family of the node's socket (:attr:`NatState.family`) decides the mode;
votes of both families are kept and classified.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .dialback import (
    ContactedIps,
    Helper,
    HelperDecision,
    Prober,
    ProberDecision,
    ProbeRounds,
    Verdict,
)
from .extaddr import AddressChange, ExternalAddressVoter, ip_family
from .fifo import Fifo
from .messages import Address
from .natclass import NatClass, classify
from .natconfig import NatConfig
from .natwire import ProbeStatus
from .reachability import Mode, ModeChange, ReachabilityTracker

MODES = ("auto", "server", "client")
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
__all__ = ["MODES", "Change", "ClassChange", "NatState", "Verdict"]


@dataclass(frozen=True, slots=True)
class ClassChange:
    family: int
    old: NatClass
    new: NatClass
    at: float


Change = AddressChange | ModeChange | ClassChange
_ClassInputs = tuple[int, str | None, Address | None]
"""What a NAT classification reads besides time: votes version, external IP, bound address."""


class NatState:
    """Everything NAT of one node."""

    def __init__(
        self,
        config: NatConfig,
        rng: random.Random,
        now: float,
        *,
        mode: str = "auto",
        family: int = 4,
        local: Address | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.config = config
        self.family = family
        self.local = local
        """The address our socket is bound to, when known (tells PUBLIC from a cone NAT)."""
        self.is_local: Callable[[str], bool] | None = None
        """Whether an IP is one of this host's own (set by a driver whose socket is bound to
        a wildcard address: the adopted external IP being ours means no NAT)."""
        self.voters = {4: ExternalAddressVoter(config, 4), 6: ExternalAddressVoter(config, 6)}
        self.classes = {4: NatClass.UNKNOWN, 6: NatClass.UNKNOWN}
        fixed = None if mode == "auto" else Mode(mode)
        self.tracker = ReachabilityTracker(config, now, fixed)
        self.rounds = ProbeRounds(config, rng)
        self.contacted = ContactedIps(config.contacted_window, config.contacted_max)
        self.helper = Helper(config, rng)
        self.prober = Prober(config)
        self._classified: dict[int, tuple[_ClassInputs, float, float]] = {}
        """Per family: what the last classification read (votes version, external IP,
        bound address), when, and the cast time of its oldest live vote. Every answer is a
        vote, mostly a repeat: the class is derived again only when one of these moved."""
        self.changes: Fifo[Change] = Fifo(maxlen=64)
        """What changed, oldest first, for the driver to log (bounded; no deque block
        while empty, which it is between two datagrams)."""
        self._stats: Counter[str] = Counter()

    # --- state ---------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self.tracker.mode

    @property
    def is_client(self) -> bool:
        return self.tracker.mode is Mode.CLIENT

    # --- what the engine reports ---------------------------------------------------------

    def sent_to(self, ip: str, now: float) -> None:
        """We sent a datagram to ``ip`` (any kind: it may open our NAT's filter to it)."""
        self.contacted.sent(ip, now)

    def observed(self, observer: Address, seen: Address, now: float) -> None:
        """``observer`` answered a request of ours and saw us at ``seen``."""
        family = ip_family(seen[0])
        voter = self.voters.get(family) if family is not None else None
        if voter is None:
            self._stats["votes.rejected.invalid"] += 1
            return
        change = voter.vote(observer, seen, now)
        if change is not None:
            self.changes.append(change)
            if change.moved and family == self.family:
                mode_change = self.tracker.address_changed(now)
                self.rounds.forget_epoch(self.tracker.epoch)
                if mode_change is not None:
                    self.changes.append(mode_change)
        self._reclassify(voter, now)

    def _reclassify(self, voter: ExternalAddressVoter, now: float) -> None:
        local, is_local = self.local, self.is_local
        if local is not None and local[0] in WILDCARDS and voter.ip and is_local is not None:
            # Bound to every address: the external IP being one of them means no NAT.
            local = (voter.ip, local[1]) if is_local(voter.ip) else local
        inputs = (voter.version, voter.ip, local)
        last = self._classified.get(voter.family)
        if (
            last is not None
            and last[0] == inputs
            and last[1] <= now
            and last[2] >= now - self.config.vote_window
        ):
            return  # the same live votes, IP and address as last time: the same outcome
        self._classified[voter.family] = (inputs, now, voter.oldest_live(now))
        observations = [seen for _, seen in voter.observations(now)]
        of_ip = sum(1 for host, _ in observations if host == voter.ip)
        if of_ip < self.config.class_min_observers and voter.ip is not None:
            return  # votes aged out (an idle node): keep what they showed, until new ones
        new = classify(observations, voter.ip, local, self.config.class_min_observers)
        old = self.classes[voter.family]
        if new is not old:
            self.classes[voter.family] = new
            self.changes.append(ClassChange(voter.family, old, new, now))

    # --- our own probe rounds (role A) ---------------------------------------------------

    def rounds_wanted(self, now: float) -> int:
        return self.tracker.wanted(now)

    def busy_helpers(self) -> set[Address]:
        """Helpers already asked in a round in flight (do not ask them again now)."""
        return self.rounds.helpers()

    def start_round(self, helper: Address, now: float, answer_timeout: float) -> bytes:
        """A round through ``helper`` starts: the nonce its DIALBACK carries."""
        epoch = self.tracker.started(1, now)
        return self.rounds.start(helper, epoch, now, answer_timeout)

    def received_from(self, ip: str, now: float) -> None:
        """A datagram came from ``ip`` (any kind): it refreshes a hole our NAT may hold open
        for it (see :meth:`.ContactedIps.received`)."""
        self.contacted.received(ip, now)

    def hold_off(self, probers: list[str], now: float) -> bool:
        """Whether to delay the rounds wanted now, given the IPs of the servers that could
        probe us (our table's, less the helpers about to be asked). Only after
        ``probe_window`` rounds in a row came back tainted, and only while every one of
        those servers is still one we contacted: in a small network each probe would then
        come through a hole our traffic opened, and keep it open (NATs refresh on inbound
        traffic), so rounds could never prove anything. The rounds wait until the first of
        them is clear. (In a bigger network helpers pick probers we never met, and rounds
        go on at once.)"""
        if self.rounds.tainted_in_row < self.config.probe_window or not probers:
            return False
        contacted = self.contacted
        clear = min(contacted.clear_at(ip) for ip in probers)
        if clear <= now:
            return False
        self.tracker.wait_until(clear)
        self._stats["rounds.held_off"] += 1
        return True

    def no_helpers(self, now: float) -> None:
        """Rounds were wanted but no server could be asked: retry shortly."""
        self.tracker.unavailable(now)

    def dialback_answered(self, nonce: bytes, status: ProbeStatus, now: float) -> None:
        """The helper's DIALBACK_REPLY (or FAILED when it never answered)."""
        ended = self.rounds.answered(nonce, status, now)
        if ended is not None:
            self.tracker.inconclusive(ended.epoch, now)

    def probe_arrived(self, source: Address, nonce: bytes, now: float) -> Verdict:
        """A PROBE came from ``source``."""
        verdict, round_ = self.rounds.probe(nonce, source, self.contacted, now)
        if verdict is Verdict.SUCCESS and round_ is not None:
            self._note(self.tracker.record(True, round_.epoch, now))
        return verdict

    def handle_timer(self, now: float) -> None:
        """End the rounds past their deadline and apply a mode change the dwell held back."""
        for round_ in self.rounds.expired(now):
            if round_.arranged and not round_.tainted:
                self._note(self.tracker.record(False, round_.epoch, now))
            else:
                self.tracker.inconclusive(round_.epoch, now)
        self._note(self.tracker.evaluate(now))
        for voter in self.voters.values():
            if voter.decide(now) is not None:  # pragma: no cover - votes only expire here
                self._reclassify(voter, now)

    def timer(self) -> float:
        """The next deadline: a round's, or the next round's start."""
        if not self.rounds.rounds:  # the usual case: asked after every datagram
            return self.tracker.timer()
        return min(self.rounds.timer(), self.tracker.timer())

    def _note(self, change: ModeChange | None) -> None:
        if change is not None:
            self.changes.append(change)

    # --- services for others (roles B and C) ---------------------------------------------

    def serve_dialback(
        self, requester: Address, servers: list[Address], own_ip: str | None, now: float
    ) -> HelperDecision:
        return self.helper.on_dialback(requester, servers, own_ip, now)

    def serve_relay(
        self,
        relayer: Address,
        relayer_is_server: bool,
        target: Address,
        own: Address | None,
        request_size: int,
        probe_size: int,
        now: float,
    ) -> ProberDecision:
        return self.prober.on_relay(
            relayer, relayer_is_server, target, own, request_size, probe_size, now
        )

    # --- views ---------------------------------------------------------------------------

    def stats(self) -> Counter[str]:
        """Every NAT counter (votes, probes sent / answered / refused, mode changes …)."""
        out: Counter[str] = Counter(self._stats)
        for voter in self.voters.values():
            out.update(voter.stats)
        for part in (self.tracker, self.rounds, self.helper, self.prober):
            out.update(part.stats)
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        """``node.reachability``: mode, since when (and for how long: ``in_mode_s``), external
        addresses, NAT classes, the last probe results and the counters."""
        tracker = self.tracker
        return {
            "mode": tracker.mode.value,
            "fixed": tracker.fixed is not None,
            "since": tracker.since,
            "in_mode_s": max(0.0, now - tracker.since),
            "external": {
                f"ipv{f}": {"ip": v.ip, "address": v.address} for f, v in self.voters.items()
            },
            "nat_class": {f"ipv{f}": c.value for f, c in self.classes.items()},
            "last_probes": [{"at": at, "ok": ok} for at, ok in tracker.results],
            "rounds_in_flight": len(self.rounds.rounds),
            "next_probe_at": tracker.next_probe_at,
            "stats": dict(self.stats()),
        }
