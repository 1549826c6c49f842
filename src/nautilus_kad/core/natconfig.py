"""Every threshold and timer of the NAT layer in one frozen place.

The numbers and where they come from (``../shared/research/nat.md``):

* external-address vote: 4 distinct observer networks (go-libp2p's ``ActivationThresh``, an
  IPv4 observer counted per /24 here and an IPv6 one per /56), a change needs 1.5 times the
  runner-up (libtorrent's ``top * 2/3 > second``; discv5 asks 1.3), votes age out after
  300 s (geth's 5 min window; discv5 keeps 120 s) and the adopted address changes at most
  once per 300 s (libtorrent rotates at most every 5 min, against port-cycling NATs);
* reachability: server after 3 of the last 5 probe rounds succeeded (dht-rpc's 3 of 5),
  back to client after 4 failures in a row (go-libp2p AutoNAT v1 decays over up to 4) or an
  address change; at least 10 min in a mode (dht-rpc waits 20); re-probe after 90 s while
  unsure and 15 min when sure (AutoNAT v1's retry and refresh intervals);
* dial-back service: 3 requests per requester IP and 30 overall per minute (AutoNAT v1's
  server throttle);
* an IP we sent to in the last 300 s may have an open filter in our NAT (RFC 4787 asks
  mappings to live at least 2 min and recommends 5), so a probe from it proves nothing.

Tests and the NAT lab scale the timers down; the ratios between them are what matter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Tunable NAT parameters (seconds for every duration)."""

    # --- external address ----------------------------------------------------------------
    vote_min_observers: int = 4
    """Distinct observer networks that must agree before an external address is adopted."""
    vote_margin: float = 1.5
    """The winner needs at least this many times the runner-up's votes (and the current
    address's, to replace it)."""
    vote_window: float = 300.0
    """A vote counts for this long after it was cast."""
    vote_change_interval: float = 300.0
    """The adopted address changes at most once per this long."""
    vote_prefix_v4: int = 24
    """IPv4 observers in one network of this prefix length count as one observer."""
    vote_prefix_v6: int = 56
    """IPv6 observers in one network of this prefix length count as one observer."""
    vote_max_observers: int = 64
    """Observer networks remembered per address family (the least recent is forgotten)."""

    # --- NAT class -----------------------------------------------------------------------
    class_min_observers: int = 3
    """Observations of the external IP needed before the mapping is classified."""

    # --- reachability --------------------------------------------------------------------
    probe_window: int = 5
    """Probe rounds remembered."""
    probe_quorum: int = 3
    """Successful rounds among the remembered ones that make a client a server."""
    probe_failures: int = 4
    """Failed rounds in a row that make a server a client again."""
    probe_copies: int = 2
    """Probe datagrams a prober sends per round (a single lost datagram must not count)."""
    probe_spacing: float = 0.5
    """Seconds between a prober's copies (back-to-back copies tend to be lost together)."""
    probe_timeout: float = 5.0
    """How long after the helper's answer a round waits for its probe."""
    mode_min_dwell: float = 600.0
    """Least time between two mode changes (an address change overrides it)."""
    reprobe_unsure: float = 90.0
    """Next round after this long while the results do not yet back the current mode."""
    reprobe_sure: float = 900.0
    """Next round after this long once they do."""
    contacted_window: float = 300.0
    """A probe from an IP we sent anything to this recently does not count."""
    contacted_max: int = 4096
    """IPs remembered for :attr:`contacted_window` (oldest forgotten first)."""
    max_rounds_in_flight: int = 5
    """Probe rounds a node runs at once (a new node starts this many)."""

    # --- the dial-back service (helpers and probers) -------------------------------------
    serve_period: float = 60.0
    """The period of the per-requester and global limits below."""
    serve_per_requester: int = 3
    """Dial-back or relay requests served per requester IP per period."""
    serve_global: int = 30
    """Dial-back or relay requests served in total per period."""
    serve_max_requesters: int = 1024
    """Requester IPs whose counts are remembered (oldest forgotten first)."""

    def __post_init__(self) -> None:
        if self.vote_min_observers < 1 or self.vote_margin < 1.0:
            raise ValueError("vote_min_observers >= 1 and vote_margin >= 1 needed")
        if not 0 < self.probe_quorum <= self.probe_window:
            raise ValueError("need 0 < probe_quorum <= probe_window")
        if self.probe_failures < 1 or self.probe_copies < 1:
            raise ValueError("probe_failures and probe_copies must be >= 1")
        if not (0 <= self.vote_prefix_v4 <= 32 and 0 <= self.vote_prefix_v6 <= 128):
            raise ValueError("vote prefixes out of range")
        for name in (
            "vote_window",
            "vote_change_interval",
            "probe_timeout",
            "mode_min_dwell",
            "reprobe_unsure",
            "reprobe_sure",
            "contacted_window",
            "serve_period",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def scaled(self, factor: float) -> NatConfig:
        """The same parameters with every duration multiplied by ``factor`` (tests, labs)."""
        return replace(
            self,
            vote_window=self.vote_window * factor,
            vote_change_interval=self.vote_change_interval * factor,
            probe_spacing=self.probe_spacing * factor,
            probe_timeout=self.probe_timeout * factor,
            mode_min_dwell=self.mode_min_dwell * factor,
            reprobe_unsure=self.reprobe_unsure * factor,
            reprobe_sure=self.reprobe_sure * factor,
            contacted_window=self.contacted_window * factor,
            serve_period=self.serve_period * factor,
        )
