"""Every timer and limit of NAT traversal (rendezvous, connect, punching, relay) in one place.

Where the defaults come from (``../shared/research/nat.md``):

* rendezvous: 3 per client (hyperdht announces to the 3 closest), a REGISTER every 20 s that
  is also the keepalive (well under the 30 s UDP binding timeout of the strictest common
  NATs; RFC 4787 asks for 2 min, many home routers keep 30-60 s), a lease of 3.5 intervals;
* punching: a round every 200 ms for up to 2 s (the research asks 200 ms to 1 s rounds for at
  most 10 s and direct within 2 s), the relay after 1 s without a direct path, then a new
  try every 5 s while relayed (hyperdht keeps punching while relayed, DCUtR retries twice);
* relay: 128 reservations per relay, 8 per IP, 16 circuits per peer, 2 min and 128 KiB per
  direction per circuit (Circuit Relay v2's go defaults).

Tests and the NAT lab scale the timers down; the ratios between them are what matter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class TraversalConfig:
    """Tunable NAT traversal parameters (seconds for every duration)."""

    # --- rendezvous (client side) ----------------------------------------------------------
    rendezvous: int = 3
    """Servers a client-mode node registers with (the closest to its own id); 0 disables."""
    keepalive: float = 20.0
    """Interval of REGISTER (the keepalive) to each rendezvous, and of channel keepalives."""
    announce_interval: float = 300.0
    """A registered client looks up its own id this often (the first time soon after it
    starts registering) and moves to the closest servers that lookup finds: its table
    learns little of its own neighbourhood after its join (nobody looks a client up), so
    without it the rendezvous chosen in a small network stay while the network grows and a
    lookup of the client's id no longer finds them (hyperdht re-announces to a fresh
    lookup's closest every few minutes)."""
    # --- rendezvous and relay (server side) --------------------------------------------------
    lease: float = 70.0
    """How long a rendezvous keeps a registration after the last REGISTER."""
    max_registrations: int = 128
    """Registrations (relay reservations) one server holds."""
    max_registrations_per_ip: int = 8
    """Registrations of distinct nodes from one IP."""
    relay: bool = True
    """Whether this node (when a server) relays circuits for the clients registered with it."""
    max_circuits: int = 64
    """Circuits one relay carries at once."""
    max_circuits_per_peer: int = 16
    """Circuits at once towards one registered node (and from one initiator IP)."""
    circuit_duration: float = 120.0
    """A circuit's lifetime."""
    circuit_bytes: int = 128 * 1024
    """Bytes a circuit carries per direction."""
    relay_renewals: int = 4
    """A relayed channel whose circuit a relay ended (its time or bytes were used up) with
    no direct path known asks the same rendezvous for a new circuit, this many times in the
    channel's life; then it closes ("the relay ended the circuit")."""
    circuit_idle: float = 60.0
    """A circuit that carried nothing this long is closed (three channel keepalives: one
    or two lost on a lossy path must not end it)."""
    serve_period: float = 60.0
    """Period of the request limits below."""
    serve_per_ip: int = 300
    """REGISTER and CONNECT requests served per requester IP per period."""
    serve_global: int = 2000
    """REGISTER and CONNECT requests served in total per period."""
    # --- connect and punching ----------------------------------------------------------------
    connect_fanout: int = 3
    """Rendezvous candidates asked at once (the closest to the target)."""
    connect_tries: int = 8
    """Candidates asked in all before a connect fails with NOT_FOUND."""
    connect_retry: float = 0.4
    """A candidate silent this long gets the CONNECT again (a lost datagram on the way to
    the rendezvous, to the target or back) …"""
    connect_retries: int = 3
    """… at most this many times."""
    punch_interval: float = 0.2
    """Seconds between punch rounds (one datagram per candidate address per round)."""
    punch_rounds: int = 10
    """Punch rounds per attempt."""
    relay_after: float = 1.0
    """Use the relay circuit once punching found no direct path for this long."""
    relay_only: bool = False
    """Never punch: every channel to a NATed peer is relayed (a product option, and tests)."""
    upgrade_interval: float = 5.0
    """While relayed, punch again every this long …"""
    upgrade_tries: int = 6
    """… this many times."""
    channel_idle: float = 120.0
    """A channel that received nothing (not even a keepalive) this long is closed."""
    max_channels: int = 256
    """Channels (open or being set up) at once."""
    max_offers_remembered: int = 4096
    """Offer nonces remembered against replays."""
    offer_max_age: float = 120.0
    """Offers dated further than this from our clock are refused (replays, clock skew)."""

    def __post_init__(self) -> None:
        if self.rendezvous < 0 or self.connect_fanout < 1 or self.connect_tries < 1:
            raise ValueError("rendezvous >= 0, connect_fanout >= 1 and connect_tries >= 1")
        if self.punch_rounds < 0 or self.upgrade_tries < 0 or self.relay_renewals < 0:
            raise ValueError("punch_rounds, upgrade_tries and relay_renewals must be >= 0")
        for name in (
            "keepalive", "announce_interval", "lease", "punch_interval", "channel_idle",
            "serve_period",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    def scaled(self, factor: float) -> TraversalConfig:
        """The same parameters with the long timers multiplied by ``factor`` (tests, labs)."""
        return replace(
            self,
            keepalive=self.keepalive * factor,
            announce_interval=self.announce_interval * factor,
            lease=self.lease * factor,
            circuit_duration=self.circuit_duration * factor,
            circuit_idle=self.circuit_idle * factor,
            upgrade_interval=self.upgrade_interval * factor,
            channel_idle=self.channel_idle * factor,
            serve_period=self.serve_period * factor,
        )
