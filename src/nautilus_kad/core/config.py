"""Every protocol constant in one frozen place.

A node, the simulator and the tests all take a :class:`KadConfig`; nothing else in the code
base hard-codes a protocol number. The defaults follow the Kademlia paper, BEP 5 and
go-libp2p-kad-dht, adjusted where DESIGN.md says why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .natconfig import NatConfig
from .traversalconfig import TraversalConfig

MAX_DATAGRAM = 1200
"""Largest datagram we send or accept: fits every IPv4/IPv6 path without fragmentation."""

MAX_VALUE_SIZE = 1000
"""Largest inline value of an open record; the codec's tests prove a STORE of this size fits."""


@dataclass(frozen=True, slots=True)
class KadConfig:
    """Tunable protocol parameters (seconds for every duration)."""

    k: int = 20
    """Bucket size and replication factor."""
    alpha: int = 3
    """Requests a lookup keeps in flight (per path)."""
    disjoint_paths: int = 1
    """d of S/Kademlia: every lookup runs on this many paths that never query the same node,
    so colluding misrouting nodes must capture all d to defeat it. Costs about d times the
    messages; :meth:`secure` turns it on (the simulator's adversarial scenario measures both)."""
    replacement_cache_size: int = 20
    """Verified spares kept per bucket to replace failed entries."""
    max_failures: int = 5
    """Consecutive failures after which an entry with no replacement is removed."""

    request_timeout: float = 2.0
    """Hard deadline of a request: after it the request counts as failed for the peer."""
    min_soft_timeout: float = 0.05
    """Floor of the adaptive timeout after which a lookup stops waiting for a peer."""
    max_soft_timeout: float = 2.0
    """Ceiling of the adaptive timeout (also used before anything was measured)."""
    slow_grace: float = 1.0
    """How long past its soft timeout a lookup still waits for a slow peer that is among the
    k closest it has found before finishing without it. The soft timeout frees the peer's
    slot at once (the search goes on, and the request is sent once more in case it was
    lost); the grace keeps a peer on a long link in the result: without it ~1% of lookups
    on the simulator's log-normal wide-area latency missed one of the true k closest (0.1%
    with 0.5 s, none with 1 s, at no cost in median or p99 latency). A put waits as long for
    a slow replica's STORED (a loaded machine answering 50 ms late must not cost a copy in
    the count). A dead peer delays a lookup or a put by at most this much. 0 never waits."""
    initial_rtt: float = 0.5
    """Round-trip guess for a network we know nothing about yet."""

    refresh_interval: float = 3600.0
    """A bucket untouched this long gets a lookup for a random id in its range."""
    refresh_check_interval: float = 60.0
    """How often the engine looks for idle buckets."""
    join_refresh: bool = True
    """Join as the Kademlia paper does: after the own-id lookup, also look up a random id in
    every bucket farther than the nearest neighbour, so the table covers the whole id space
    at once; except the buckets that lookup proved complete (nearer than its k-th closest
    answer: core/bootstrap.py), which at 200 nodes halves the join. Without it a join
    costs about a fifth of the messages (the own-id lookup alone makes the node known to
    its k closest, which is what exact lookups need); the far buckets then fill from
    traffic and refresh, and at 10 000 nodes lookups take about one more hop (measured by
    the simulator, which runs without it by default)."""
    ping_after_idle: float = 600.0
    """A full bucket pings its least recently seen entry before refusing a newcomer, if idle
    this long (old nodes that still answer are kept: they are the likeliest to stay)."""

    token_rotation: float = 300.0
    """Write-token secret lifetime; the previous secret stays valid for one more period."""

    record_ttl: float = 86400.0
    """Default lifetime of a stored record."""
    max_record_ttl: float = 86400.0
    """Longest lifetime a storer accepts; longer requests are cut to this."""
    max_value_size: int = MAX_VALUE_SIZE
    expire_interval: float = 60.0
    """How often expired records are swept."""
    max_records: int = 100_000
    """Records one node stores at most (a storage flood cannot exhaust memory). A full store
    answers STORE of a new key with ERROR(STORE_FULL); it never evicts what it holds."""
    max_records_per_source: int = 10_000
    """New records one source IP address may make this node store (ERROR(QUOTA_EXCEEDED)
    beyond it). Every node of a loopback test network shares one address: raise it there."""
    max_clock_skew: float = 3600.0
    """A STORE whose record is timestamped further than this in our future is refused (its
    publication time bounds its life, so a far-future stamp would never expire)."""

    republish_interval: float = 3600.0
    """Every holder re-stores each record on the current k closest this often, unless the
    record reached it again within the interval (then another holder just did it)."""
    republish_jitter: float = 0.1
    """Republish timers fire after ``republish_interval * (1 - U(0, jitter))``, so the k
    holders of a record do not all fire at once and the first one resets the others."""
    publisher_republish_interval: float = 79_200.0
    """The original publisher re-puts its own records this often (22 h: before the 24 h TTL
    runs out), extending their lifetime."""
    repair_delay: float = 30.0
    """A holder that finds another holder dead re-replicates after ``U(1, 2)`` times this
    (short, but long enough for one holder to do it and the others to see it done)."""
    repair_cooldown: float = 600.0
    """A node forces a repair of one record at most this often (under heavy churn a holder
    of every record dies every few minutes; between repairs, handoffs to the newcomers that
    take the dead nodes' places keep the count up)."""
    handoff_redundancy: int = 3
    """A node hands a record to a newcomer among its k closest only if the node itself is
    among the this-many closest known holders (not all k holders send the same record)."""
    replication_window: int = 32
    """Replication STOREs (republish, handoff, repair, leave) in flight at once per node; a
    slot frees when the STORE is answered or times out for good (flow control)."""
    max_concurrent_republish: int = 16
    """Republish lookups running at once; due records beyond this wait their turn."""
    scan_batch: int = 512
    """Records examined per timer tick when a peer joins or dies (bounded work per step)."""
    neighbour_check_interval: float = 300.0
    """A node holding records PINGs those of its k closest neighbours it has not heard from
    this long. Its neighbours hold the same records: a dead one must stop counting as a
    holder (or nobody hands records to newcomers in its place), and its failures lead to
    its eviction and a repair. 0 disables the checks."""
    leave_timeout: float = 5.0
    """How long a clean stop may spend handing records on to the nodes that keep them."""
    state_save_interval: float = 60.0
    """How often a node with a data dir saves its routing table and published records."""
    rejoin_interval: float = 30.0
    """A node with an empty routing table (a restart none of whose saved peers answered, or
    every peer it knew stopped answering) retries its bootstrap and saved peers this often."""

    mode: str = "server"
    """``server``: serve the DHT (enter others' tables, hold records) from the start, as
    every node did before reachability checks; ``client``: never serve; ``auto``: start as
    a client and become a server once probes prove datagrams we did not ask for reach us
    (docs/nat.md). A network needs a few ``server`` nodes to probe the first ``auto`` ones,
    and nodes that all share one IP (loopback tests) can never prove it."""
    nat: NatConfig = field(default_factory=NatConfig)
    """The NAT layer's thresholds and timers (core/natconfig.py)."""
    traversal: TraversalConfig = field(default_factory=TraversalConfig)
    """NAT traversal: rendezvous, connect, punching and relay (core/traversalconfig.py)."""

    store_quorum: int = 1
    """Acknowledged STOREs for a put to count as successful."""
    signed_get_quorum: int = 4
    """Valid answers a get of a signed record collects among the closest nodes before it
    returns the highest sequence number (and writes it back to replicas that lag); at most
    k are ever asked."""
    verify_cache_size: int = 8
    """Node ids of the peer keys that signed validly most recently, so a known peer's id is
    not hashed again. Each costs about 100 bytes in every node (the key, the dict slot); a
    miss costs one SHA-256 (about 1 µs) beside the 66 µs of the signature check, and peers
    that talk repeatedly move to sessions, which need no signature check at all."""
    max_pending_requests: int = 4096
    """Outstanding requests per node; new ones beyond this fail at once."""
    max_pending_verifications: int = 256
    """Strangers we ping at once before they may enter the routing table."""
    allow_private_addresses: bool = True
    """Accept loopback/private addresses in contacts (test networks and LANs)."""

    sessions: bool = True
    """Agree per-peer session keys with peers we talk to repeatedly, so their datagrams carry
    an AEAD tag instead of an Ed25519 signature (see core/session.py)."""
    session_after_answers: int = 2
    """Offer a session to a peer once it has answered this many of our requests (the
    simulator shows most peers of a large network answer only once or twice)."""
    session_idle_timeout: float = 300.0
    """A session nobody used for this long is forgotten."""
    session_max_lifetime: float = 3600.0
    """A session is replaced by a fresh handshake after this long, however busy."""
    max_sessions: int = 4096
    """Sessions kept at most; half-open ones (never used by the initiator) are evicted first."""
    session_ciphers: int = 4
    """AEAD contexts kept live across all sessions (each holds about 2.3 KiB of native
    memory); a session past them rebuilds its context on its next datagram (about 1.5 µs).
    Most sessions carry a few datagrams between long pauses: in a 200-node loopback network
    60% of the datagrams rebuilt their context with 16 kept and 63% with 4, so more buys
    little but costs 2.3 KiB each in every node; a busy pair of peers keeps theirs."""
    max_pending_offers: int = 1024
    """Handshakes we initiated and still wait on, at most."""
    max_replay_entries: int = 65536
    """Signatures of recent signed requests kept to drop exact replays (for two token
    rotations; older replays of a STORE fail their token)."""
    amplification_factor: int = 3
    """Everything a node sends to an address it has not verified (no answer of that address
    to a request of ours, no confirmed session, no routing-table entry there) adds up to at
    most this many times the authenticated bytes it received from that address: answers,
    handshake accepts and the PING that checks a stranger before it may enter the table."""
    amplification_addresses: int = 16384
    """Unverified addresses whose byte budget is tracked at once (least recent forgotten: a
    forgotten address starts again from nothing, so forgetting never adds budget)."""

    # --- abuse resistance (core/ratelimit.py, core/routing.py) --------------------------
    rate_limit: float = 200.0
    """Datagrams per second one source IP may send us, sustained (0: no per-IP limit).
    Checked right after the size, before any decoding or cryptography."""
    rate_burst: int = 400
    """Datagrams one source IP may send at once before ``rate_limit`` applies."""
    rate_penalty: float = 60.0
    """An IP that sends another ``rate_burst`` datagrams while already over its limit is
    ignored altogether for this long."""
    rate_limit_sources: int = 16384
    """Source IPs whose buckets are kept at once (least recently heard from forgotten)."""
    rate_limit_local: bool = False
    """Also limit loopback and private sources. Off by default: every node of a loopback or
    private test network shares one address (the limits are for the public internet)."""
    subnet_limits: bool = True
    """Routing-table diversity: at most ``max_per_subnet_bucket`` entries of one /24 (IPv6:
    /48) per bucket and ``max_per_subnet_table`` in the table. Applies to public addresses
    only (loopback and private test networks are exempt)."""
    max_per_subnet_bucket: int = 2
    max_per_subnet_table: int = 10
    max_store_bytes: int = 64 * 1024 * 1024
    """Bytes of records (values, keys, signatures …; see ``records.record_size``) one node
    stores at most: with ``max_records`` it bounds memory and disk whatever the records'
    sizes. New records beyond it are refused with ERROR(STORE_FULL)."""
    max_bytes_per_source: int = 8 * 1024 * 1024
    """Bytes of new records one source IP address may make this node store
    (ERROR(QUOTA_EXCEEDED) beyond it)."""

    @classmethod
    def secure(cls, **changes: object) -> KadConfig:
        """The ``secure`` profile: the defaults hardened against hostile peers.

        Lookups run on 4 disjoint paths (with 20% and 30% hostile nodes of the strongest
        simulated kind at 10 000 nodes the simulator measures 100% success, see
        docs/simulator.md) and signed gets collect
        a larger quorum of answers before choosing the newest version. Everything else that
        defends against abuse (signed datagrams, write tokens, strict decoding, quotas,
        anti-amplification) is on in every profile.
        """
        base: dict[str, object] = {"disjoint_paths": 4, "signed_get_quorum": 8}
        base.update(changes)
        return cls(**base)  # type: ignore[arg-type]

    def with_changes(self, **changes: object) -> KadConfig:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "server", "client"):
            raise ValueError("mode must be auto, server or client")
        if self.k < 1 or self.alpha < 1:
            raise ValueError("k and alpha must be positive")
        if not 1 <= self.disjoint_paths <= 16:
            raise ValueError("disjoint_paths must lie in 1..16")
        if self.max_value_size > MAX_VALUE_SIZE:
            raise ValueError(f"inline values cannot exceed {MAX_VALUE_SIZE} bytes")
        if not 0 < self.min_soft_timeout <= self.max_soft_timeout <= self.request_timeout:
            raise ValueError("need 0 < min_soft_timeout <= max_soft_timeout <= request_timeout")
        if self.store_quorum < 1 or self.store_quorum > self.k:
            raise ValueError("store_quorum must lie in 1..k")
        if self.amplification_factor < 1 or self.max_sessions < 1 or self.session_ciphers < 1:
            raise ValueError(
                "amplification_factor, max_sessions and session_ciphers must be positive"
            )
        if self.rate_limit < 0 or self.rate_burst < 1 or self.rate_penalty < 0:
            raise ValueError("need rate_limit >= 0, rate_burst >= 1 and rate_penalty >= 0")
        if self.rate_limit_sources < 1 or self.amplification_addresses < 1:
            raise ValueError("rate_limit_sources and amplification_addresses must be positive")
        if self.max_per_subnet_bucket < 1 or self.max_per_subnet_table < 1:
            raise ValueError("subnet limits must be positive")
        if self.signed_get_quorum < 1:
            raise ValueError("signed_get_quorum must be positive")
        if not 0 <= self.republish_jitter < 1:
            raise ValueError("republish_jitter must lie in [0, 1)")
        if self.republish_interval <= 0 or self.publisher_republish_interval <= 0:
            raise ValueError("republish intervals must be positive")
        if self.replication_window < 1 or self.max_concurrent_republish < 1:
            raise ValueError("replication_window and max_concurrent_republish must be positive")
        if self.handoff_redundancy < 1 or self.scan_batch < 1:
            raise ValueError("handoff_redundancy and scan_batch must be positive")
