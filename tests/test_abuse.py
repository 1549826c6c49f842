"""Abuse resistance of the sans-I/O core: the ingress pipeline with its per-IP rate limit,
per-address amplification budgets, routing-table hygiene (subnet diversity, no private
contacts from public peers, old live nodes kept under a flood of new ids) and storage floods.

Every test drives a real :class:`KadEngine` (or :class:`RoutingTable`) with signed datagrams;
the attackers are public addresses (the limits exempt loopback and private test networks).
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from nautilus_kad.core.addresses import Scope, address_scope, subnet_of
from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM, KadConfig
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.limits import MAX_PING_BYTES
from nautilus_kad.core.messages import (
    Address,
    Contact,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
)
from nautilus_kad.core.ratelimit import BLOCKED, RATE_LIMITED, SourceRateLimiter
from nautilus_kad.core.records import Record, record_size
from nautilus_kad.core.routing import RoutingTable
from nautilus_kad.persist.sqlite_store import SqliteStore

NOW = 1_000_000.0
SERVER: Address = ("198.51.100.1", 4000)  # the address does not matter to the server itself


class Peer:
    """A remote party with its own key, sending hand-made signed datagrams."""

    def __init__(self, address: Address, seed: int, *, client: bool = False) -> None:
        self.address = address
        self.identity = Identity.generate(random.Random(10**6 + seed))
        self.auth = Authenticator(self.identity)
        self.flags = FLAG_CLIENT if client else 0
        self.rng = random.Random(seed + 1)

    def request(self, message: Message, pad_to: int = 0) -> bytes:
        return encode_message(message, self.rng.randbytes(8), self.auth, self.flags, pad_to=pad_to)

    def answer(self, message: Message, txid: bytes) -> bytes:
        return encode_message(message, txid, self.auth, self.flags)


def make_server(seed: int = 1, **changes: object) -> KadEngine:
    engine = KadEngine(
        Identity.generate(random.Random(seed)),
        config=KadConfig().with_changes(**changes),
        rng=random.Random(seed),
        now=NOW,
    )
    engine.address = SERVER
    return engine


def sent_to(engine: KadEngine, address: Address) -> list[bytes]:
    return [d for d, dst in engine.datagrams_to_send() if dst == address]


def populate(engine: KadEngine, count: int, now: float = NOW) -> list[Peer]:
    """Make ``count`` public peers answer a PING of ``engine`` (so they enter its table)."""
    peers = []
    for i in range(count):
        peer = Peer((f"{20 + i}.{i}.1.1", 4000), 1000 + i)
        engine.ping(peer.address, now)
        (request,) = sent_to(engine, peer.address)
        envelope = decode_datagram(request, peer.auth)
        engine.receive_datagram(peer.answer(Pong(peer.address), envelope.txid), peer.address, now)
        peers.append(peer)
    assert len(engine.table) == count
    return peers


# --- addresses ---------------------------------------------------------------------------------


def test_address_scopes_and_subnets() -> None:
    assert address_scope("8.8.8.8") is Scope.PUBLIC
    assert address_scope("2001:4860::8888") is Scope.PUBLIC
    for local in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fe80::1", "100.64.0.1"):
        assert address_scope(local) is Scope.LOCAL, local
    for invalid in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "not-an-ip"):
        assert address_scope(invalid) is Scope.INVALID, invalid
    assert subnet_of("8.8.8.8") == subnet_of("8.8.8.200") == "8.8.8.0/24"
    assert subnet_of("2001:4860:1:2::1") == subnet_of("2001:4860:1:ffff::9") == "2001:4860:1::/48"
    assert subnet_of("10.0.0.1") is None


# --- the per-IP token bucket -------------------------------------------------------------------


def test_token_bucket_throttles_then_blocks_then_forgives() -> None:
    limiter = SourceRateLimiter(KadConfig(rate_limit=10.0, rate_burst=5, rate_penalty=30.0))
    ip = "8.8.8.8"
    assert [limiter.admit(ip, 0.0) for _ in range(5)] == [None] * 5
    assert limiter.admit(ip, 0.0) == RATE_LIMITED
    assert limiter.admit(ip, 0.1) is None  # one token refilled after 0.1 s at 10/s
    # Keep sending while empty: after another burst of refusals the IP is ignored.
    reasons = [limiter.admit(ip, 0.1) for _ in range(6)]
    assert reasons[:5] == [RATE_LIMITED] * 5 and reasons[5] == BLOCKED
    assert limiter.blocks == 1 and limiter.blocked(0.2) == 1
    assert limiter.admit(ip, 29.0) == BLOCKED  # no refill while ignored
    assert limiter.admit("8.8.4.4", 29.0) is None  # others are not affected
    assert limiter.admit(ip, 30.5) is None  # the penalty is over: tokens again
    assert limiter.blocked(30.5) == 0


def test_answers_to_our_requests_are_paid_for_in_advance() -> None:
    limiter = SourceRateLimiter(KadConfig(rate_limit=1.0, rate_burst=2))
    ip = "8.8.8.8"
    assert limiter.admit(ip, 0.0) is None
    for _ in range(10):
        limiter.expect(ip)  # ten requests of ours went to it
    admitted = sum(limiter.admit(ip, 0.0) is None for _ in range(20))
    assert admitted == 4  # credit is capped at twice the burst
    limiter.expect("9.9.9.9")  # unknown IPs get no bucket from our sending
    assert len(limiter) == 1


def test_token_bucket_memory_is_bounded_and_local_sources_are_exempt() -> None:
    limiter = SourceRateLimiter(KadConfig(rate_limit=1.0, rate_burst=1, rate_limit_sources=100))
    for i in range(10_000):
        limiter.admit(f"{1 + i % 200}.{i // 200}.0.1", 0.0)
    assert len(limiter) == 100
    for _ in range(1000):
        assert limiter.admit("127.0.0.1", 0.0) is None
        assert limiter.admit("10.0.0.1", 0.0) is None
    policing = SourceRateLimiter(KadConfig(rate_limit=1.0, rate_burst=1, rate_limit_local=True))
    assert policing.admit("127.0.0.1", 0.0) is None
    assert policing.admit("127.0.0.1", 0.0) == RATE_LIMITED
    off = SourceRateLimiter(KadConfig(rate_limit=0.0))
    assert all(off.admit("8.8.8.8", 0.0) is None for _ in range(1000))


# --- the ingress pipeline -----------------------------------------------------------------------


def test_a_flooding_ip_is_throttled_then_ignored_while_others_are_served() -> None:
    server = make_server(rate_limit=10.0, rate_burst=20, rate_penalty=60.0)
    flooder = Peer(("8.8.8.8", 5000), 1, client=True)
    honest = Peer(("9.9.9.9", 5000), 2, client=True)
    answered = 0
    for _ in range(200):
        server.receive_datagram(flooder.request(Ping()), flooder.address, NOW)
        answered += len(sent_to(server, flooder.address))
    assert answered == 20  # the burst, then nothing
    stats = server.stats
    assert stats["rx.dropped.rate_limited"] == 20  # a burst of refusals ...
    assert stats["rx.dropped.blocked"] == 160  # ... then it is ignored
    assert stats["rx.request.PING"] == 20
    assert server.metrics(NOW)["ratelimit.blocked_now"] == 1
    # Another source is served all along.
    for _ in range(10):
        server.receive_datagram(honest.request(Ping()), honest.address, NOW)
        (answer,) = sent_to(server, honest.address)
        assert isinstance(decode_datagram(answer, honest.auth).message, Pong)
    # The blocked source's datagrams are not even decoded: a forged signature is not noticed.
    bad = bytearray(flooder.request(Ping()))
    bad[-1] ^= 1
    server.receive_datagram(bytes(bad), flooder.address, NOW + 1)
    assert stats["rx.dropped.signature"] == 0 and stats["rx.dropped.blocked"] == 161


def test_channel_and_relayed_datagrams_pass_the_same_per_ip_rate_limit() -> None:
    """NAT traversal's channel (0xC1 0x03) and relayed (0xC1 0x04) datagrams bypass the
    wire's decoder; they still meet the source IP's token bucket first, and each drop is
    counted under ``channel.rx.dropped.*`` too."""
    server = make_server(rate_limit=10.0, rate_burst=20, rate_penalty=60.0)
    flooder: Address = ("8.8.8.8", 5000)
    for kind in (0x03, 0x04):
        for _ in range(100):
            server.receive_datagram(bytes([0xC1, kind]) + bytes(40), flooder, NOW)
    stats = server.stats
    looked_at = stats["channel.rx.dropped.unknown"] + stats["channel.rx.dropped.schema"]
    assert looked_at == 20  # the burst is looked at (no such channel or circuit) ...
    assert stats["channel.rx.dropped.rate_limited"] == 20  # ... then a burst of refusals
    assert stats["channel.rx.dropped.blocked"] == 160  # ... then the IP is ignored
    assert stats["rx.dropped.rate_limited"] + stats["rx.dropped.blocked"] == 180
    # The same bucket: the blocked IP's DHT requests are not served either.
    peer = Peer(flooder, 3, client=True)
    server.receive_datagram(peer.request(Ping()), flooder, NOW + 1)
    assert sent_to(server, flooder) == []


def test_size_is_checked_before_the_rate_limit() -> None:
    server = make_server(rate_limit=1.0, rate_burst=1)
    peer = Peer(("8.8.8.8", 5000), 1, client=True)
    for _ in range(50):
        server.receive_datagram(b"\x96" * (MAX_DATAGRAM + 1), peer.address, NOW)
    assert server.stats["rx.dropped.oversize"] == 50
    assert server.stats["rx.dropped.rate_limited"] == 0
    server.receive_datagram(peer.request(Ping()), peer.address, NOW)  # the token is still there
    assert len(sent_to(server, peer.address)) == 1


def test_a_store_with_a_bad_token_changes_nothing() -> None:
    server = make_server()
    populate(server, 3)
    stranger = Peer(("8.8.8.8", 4000), 77)  # not a client: a valid request would get a PING
    token = server.tokens.issue(("9.9.9.9", 4000))  # issued to another address
    server.receive_datagram(stranger.request(Store(_record(1, 10), token)), stranger.address, NOW)
    (answer,) = sent_to(server, stranger.address)  # the refusal, and no PING
    refusal = decode_datagram(answer, stranger.auth).message
    assert isinstance(refusal, Error) and refusal.code is ErrorCode.BAD_TOKEN
    assert server.stats["store.rejected.token"] == 1
    assert len(server.store) == 0 and server.pending_requests == 0
    assert stranger.identity.node_id not in server.table


# --- amplification --------------------------------------------------------------------------------


def test_spoofed_requests_never_amplify_verification_pings_included() -> None:
    server = make_server()
    populate(server, 30)
    victim: Address = ("8.8.8.8", 53)
    rng = random.Random(5)
    received = sent = 0
    for i in range(300):
        attacker = Peer(victim, 5000 + i)  # a new id each time, not a client: gets verified
        message = rng.choice([Ping(), FindNode(NodeId.random(rng)), FindValue(NodeId(7))])
        request = attacker.request(message, pad_to=rng.choice([0, 0, 200, 440]))
        received += len(request)
        server.receive_datagram(request, victim, NOW)
        sent += sum(len(d) for d in sent_to(server, victim))
        assert sent <= server.config.amplification_factor * received
    assert server.stats["tx.request.PING"] > 0  # verification PINGs went out, within budget
    assert server.stats["verify.skipped.amplification"] == 0
    assert len(server.table) == 30  # nobody answered them: no spoofed source got in


def test_a_padded_stranger_gets_a_full_answer_and_a_verification_ping() -> None:
    server = make_server()
    populate(server, 30)
    newcomer = Peer(("8.8.8.8", 4000), 99)
    request = newcomer.request(FindNode(NodeId(5)), pad_to=server.wire.pad_to)
    assert len(request) * 3 >= MAX_DATAGRAM + MAX_PING_BYTES
    server.receive_datagram(request, newcomer.address, NOW)
    out = [decode_datagram(d, newcomer.auth) for d in sent_to(server, newcomer.address)]
    assert [type(e.message) for e in out] == [Ping, Nodes]
    nodes = out[1].message
    assert isinstance(nodes, Nodes) and len(nodes.contacts) == 20
    # Its answer to the PING verifies the address: from then on no budget applies.
    server.receive_datagram(
        newcomer.answer(Pong(newcomer.address), out[0].txid), newcomer.address, NOW
    )
    assert newcomer.identity.node_id in server.table
    assert newcomer.address not in server.budget
    server.receive_datagram(newcomer.request(FindNode(NodeId(5))), newcomer.address, NOW)
    (answer,) = sent_to(server, newcomer.address)
    assert len(answer) > 3 * len(newcomer.request(FindNode(NodeId(5))))


def test_an_unpadded_stranger_gets_a_small_answer_and_no_ping_it_cannot_pay_for() -> None:
    server = make_server()
    populate(server, 30)
    stranger = Peer(("8.8.8.8", 4000), 98)
    request = stranger.request(FindNode(NodeId(5)))
    server.receive_datagram(request, stranger.address, NOW)
    out = sent_to(server, stranger.address)
    assert sum(len(d) for d in out) <= 3 * len(request)


# --- routing-table hygiene ---------------------------------------------------------------------


def _ids_in_bucket(own: NodeId, bucket: int, count: int, rng: random.Random) -> list[NodeId]:
    from nautilus_kad.core.ids import random_id_in_bucket  # noqa: PLC0415

    return [random_id_in_bucket(own, bucket, rng) for _ in range(count)]


def test_subnet_limits_per_bucket_and_per_table() -> None:
    rng = random.Random(1)
    own = NodeId.random(rng)
    table = RoutingTable(own, KadConfig(k=20), NOW)
    # One /24 floods bucket 0: two get in.
    for i, node_id in enumerate(_ids_in_bucket(own, 0, 50, rng)):
        table.observe(Contact(node_id, f"8.8.8.{i + 1}", 4000), NOW)
    assert table.bucket_sizes() == {0: 2}
    # Across buckets, ten of one /24 at most.
    for bucket in range(1, 12):
        for i, node_id in enumerate(_ids_in_bucket(own, bucket, 3, rng)):
            table.observe(Contact(node_id, f"8.8.8.{100 + bucket * 3 + i}", 4000), NOW)
    assert len(table) == 10
    assert table.refused_subnet == 48 + (33 - 8)
    # IPv6: per /48.
    for i, node_id in enumerate(_ids_in_bucket(own, 20, 5, rng)):
        table.observe(Contact(node_id, f"2001:4860:1:{i}::1", 4000), NOW)
    assert table.bucket_sizes()[20] == 2
    # Other subnets are welcome; loopback and private addresses are exempt.
    for i, node_id in enumerate(_ids_in_bucket(own, 30, 6, rng)):
        table.observe(Contact(node_id, f"9.{i}.0.1", 4000), NOW)
    for i, node_id in enumerate(_ids_in_bucket(own, 31, 6, rng)):
        table.observe(Contact(node_id, "127.0.0.1", 4000 + i), NOW)
    for i, node_id in enumerate(_ids_in_bucket(own, 32, 6, rng)):
        table.observe(Contact(node_id, "10.0.0.1", 4000 + i), NOW)
    assert table.bucket_sizes()[30] == table.bucket_sizes()[31] == table.bucket_sizes()[32] == 6


def test_subnet_limits_can_be_switched_off() -> None:
    rng = random.Random(2)
    own = NodeId.random(rng)
    table = RoutingTable(own, KadConfig(k=20, subnet_limits=False), NOW)
    for i, node_id in enumerate(_ids_in_bucket(own, 0, 50, rng)):
        table.observe(Contact(node_id, f"8.8.8.{i + 1}", 4000), NOW)
    assert table.bucket_sizes() == {0: 20}


def test_a_failed_entry_is_not_replaced_by_a_spare_over_the_subnet_limit() -> None:
    rng = random.Random(3)
    own = NodeId.random(rng)
    table = RoutingTable(own, KadConfig(k=2, max_failures=5), NOW)
    a, b, c = _ids_in_bucket(own, 0, 3, rng)
    table.observe(Contact(a, "8.8.8.1", 1), NOW)
    table.observe(Contact(b, "9.9.9.1", 1), NOW)
    table.observe(Contact(c, "9.9.9.2", 1), NOW)  # full bucket: a spare (one of 9.9.9.x so far)
    # With per-bucket 1, the spare would be the second of 9.9.9.0/24 if it replaced a:
    strict = RoutingTable(own, KadConfig(k=2, max_per_subnet_bucket=1), NOW)
    strict.observe(Contact(a, "8.8.8.1", 1), NOW)
    strict.observe(Contact(b, "9.9.9.1", 1), NOW)
    assert strict.observe(Contact(c, "9.9.9.2", 1), NOW) == (False, None)
    assert strict.record_failure(a) is None  # no spare that fits: a stays (stale)
    assert a in strict and c not in strict
    # In the lenient table the spare does replace the failed entry.
    assert table.record_failure(a) == Contact(a, "8.8.8.1", 1)
    assert c in table


def test_a_flood_of_new_ids_cannot_push_live_entries_out() -> None:
    rng = random.Random(4)
    own = NodeId.random(rng)
    config = KadConfig(k=8, replacement_cache_size=8, ping_after_idle=600.0)
    table = RoutingTable(own, config, NOW)
    old = _ids_in_bucket(own, 0, 8, rng)
    for i, node_id in enumerate(old):
        table.observe(Contact(node_id, f"{30 + i}.0.0.1", 4000), NOW)
    pings = 0
    for i, node_id in enumerate(_ids_in_bucket(own, 0, 5000, rng)):
        now = NOW + i * 0.01  # 50 s of newcomers; the old entries were seen just now
        added, to_ping = table.observe(Contact(node_id, f"{60 + i % 150}.{i // 150}.0.1", 1), now)
        assert not added
        pings += to_ping is not None
    assert pings == 0  # the old entries are not even questioned: they were seen recently
    assert {c.node_id for c in table} == set(old)
    # An idle old entry is pinged (not evicted) and stays when it answers.
    later = NOW + 700
    added, to_ping = table.observe(Contact(NodeId.random(rng), "200.0.0.1", 1), later)
    assert not added and to_ping is not None and to_ping.node_id in old
    table.observe(to_ping, later)
    assert {c.node_id for c in table} == set(old)


def test_a_full_bucket_does_not_even_ping_strangers_that_write_to_us() -> None:
    server = make_server(k=1)
    (old,) = populate(server, 1)
    bucket = server.table.bucket_of(old.identity.node_id)
    pings = server.stats["tx.request.PING"]
    seed = 7000
    for i in range(20):
        stranger = Peer((f"{40 + i}.1.1.1", 4000), seed)
        while server.table.bucket_of(stranger.identity.node_id) != bucket:
            seed += 1
            stranger = Peer((f"{40 + i}.1.1.1", 4000), seed)
        seed += 1
        server.receive_datagram(stranger.request(Ping()), stranger.address, NOW)
        (answer,) = sent_to(server, stranger.address)  # answered, but not verified
        assert isinstance(decode_datagram(answer, stranger.auth).message, Pong)
    assert server.stats["tx.request.PING"] == pings
    assert [c.node_id for c in server.table] == [old.identity.node_id]


def test_public_peers_cannot_point_us_at_private_addresses() -> None:
    server = make_server()
    (public,) = populate(server, 1)
    rng = random.Random(8)
    target = NodeId.random(rng)
    qid = server.find_node(target, NOW)
    assert qid
    (request,) = sent_to(server, public.address)
    txid = decode_datagram(request, public.auth).txid
    listed = (
        [Contact(NodeId.random(rng), "10.0.0.5", 4000)]
        + [Contact(NodeId.random(rng), "127.0.0.1", 4000 + i) for i in range(3)]
        + [Contact(NodeId.random(rng), "0.0.0.0", 4000)]
        + [Contact(NodeId.random(rng), f"77.{i}.0.1", 4000) for i in range(2)]
    )
    answer = public.answer(Nodes(SERVER, b"t" * 8, tuple(listed)), txid)
    server.receive_datagram(answer, public.address, NOW)
    asked = {dst for _, dst in server.datagrams_to_send()}
    assert asked == {("77.0.0.1", 4000), ("77.1.0.1", 4000)}
    assert server.stats["lookup.contacts_refused"] == 5


def test_local_peers_may_list_local_addresses() -> None:
    server = make_server()
    peer = Peer(("192.168.1.2", 4000), 3)
    server.ping(peer.address, NOW)
    (request,) = sent_to(server, peer.address)
    txid = decode_datagram(request, peer.auth).txid
    server.receive_datagram(peer.answer(Pong(SERVER), txid), peer.address, NOW)
    server.find_node(NodeId(1), NOW)
    (request,) = sent_to(server, peer.address)
    txid = decode_datagram(request, peer.auth).txid
    rng = random.Random(9)
    listed = (
        Contact(NodeId.random(rng), "192.168.1.3", 4000),
        Contact(NodeId.random(rng), "0.0.0.0", 1),
    )
    server.receive_datagram(peer.answer(Nodes(SERVER, b"", listed), txid), peer.address, NOW)
    asked = {dst for _, dst in server.datagrams_to_send()}
    assert asked == {("192.168.1.3", 4000)}
    assert server.stats["lookup.contacts_refused"] == 1


# --- storage floods ---------------------------------------------------------------------------


def _store_from(server: KadEngine, peer: Peer, record: Record) -> Message:
    token = server.tokens.issue(peer.address)
    server.receive_datagram(peer.request(Store(record, token)), peer.address, NOW)
    (answer,) = sent_to(server, peer.address)
    return decode_datagram(answer, peer.auth).message


def _record(i: int, size: int) -> Record:
    return Record(NodeId(i + 1), bytes([i % 256]) * size, int(NOW * 1000), 3600)


def test_byte_quotas_total_and_per_source() -> None:
    size = record_size(_record(0, 900))
    server = make_server(max_store_bytes=10 * size, max_bytes_per_source=4 * size)
    peers = [Peer((f"{50 + i}.0.0.1", 4000), 300 + i, client=True) for i in range(4)]
    answers = [_store_from(server, peers[i // 5], _record(i, 900)) for i in range(20)]
    codes = [a.code if isinstance(a, Error) else None for a in answers]
    # Four per source, ten in all.
    assert codes[:4] == [None] * 4 and codes[4] is ErrorCode.QUOTA_EXCEEDED
    assert codes.count(None) == 10
    assert ErrorCode.STORE_FULL in codes
    assert server.stored_bytes == 10 * size and len(server.store) == 10
    error = next(a for a in answers if isinstance(a, Error) and a.code is ErrorCode.STORE_FULL)
    assert f"({10 * size} bytes)" in error.message
    # Small records still fit where large ones did not... once space frees up.
    server.handle_timer(NOW + 3600 + server.config.expire_interval + 1)
    assert server.stored_bytes == 0 and len(server.store) == 0
    assert server.metrics()["store.bytes"] == 0


def test_memory_stays_bounded_under_a_storage_flood() -> None:
    server = make_server(max_store_bytes=200 * 1024, max_records=100_000)
    rng = random.Random(11)
    peers = [Peer((f"{60 + i}.{i}.0.1", 4000), 400 + i, client=True) for i in range(40)]
    tracemalloc.start()
    try:
        sample = []
        for i in range(1500):
            peer = peers[i % len(peers)]
            _store_from(server, peer, _record(rng.randrange(2**64), 900))
            if i in (750, 1499):
                sample.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert server.stored_bytes <= 200 * 1024
    assert server.stats["store.rejected.full"] > 1000
    # Full after ~210 records: the second half of the flood allocated (almost) nothing more.
    assert sample[1] - sample[0] < 64 * 1024, sample


def test_disk_stays_bounded_under_a_storage_flood(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    limit = 100 * 1024
    server = KadEngine(
        Identity.generate(random.Random(1)),
        config=KadConfig(max_store_bytes=limit),
        rng=random.Random(1),
        now=NOW,
        store=SqliteStore(path),
    )
    server.address = SERVER
    peers = [Peer((f"{70 + i}.0.0.1", 4000), 500 + i, client=True) for i in range(10)]
    sizes = []
    try:
        for i in range(600):
            _store_from(server, peers[i % 10], _record(i, 900))
            if i in (299, 599):
                sizes.append(path.stat().st_size)
        assert server.stored_bytes <= limit and len(server.store) == limit // record_size(
            _record(0, 900)
        )
    finally:
        server.store.close()
    assert sizes[0] == sizes[1]  # full at ~110 records: the rest never reached the disk
    assert sizes[1] < 3 * limit


@pytest.mark.parametrize("kind", ["count", "bytes"])
def test_updates_of_held_keys_respect_the_byte_limit(kind: str) -> None:
    size = record_size(_record(0, 10))
    server = make_server(max_store_bytes=3 * size + 100)
    peer = Peer(("8.8.8.8", 4000), 1, client=True)
    for i in range(3):
        assert isinstance(_store_from(server, peer, _record(i, 10)), Stored)
    newer = Record(NodeId(1), b"y" * (100 if kind == "count" else 500), int(NOW * 1000) + 1, 3600)
    answer = _store_from(server, peer, newer)
    if kind == "count":
        assert isinstance(answer, Stored)  # growth within the limit
    else:
        assert isinstance(answer, Error) and answer.code is ErrorCode.STORE_FULL
    assert server.stored_bytes <= 3 * size + 100


def test_metrics_show_the_limits_and_the_defences() -> None:
    server = make_server()
    metrics = server.metrics(NOW)
    for key in (
        "limit.rate_limit",
        "limit.rate_burst",
        "limit.max_store_bytes",
        "limit.max_per_subnet_bucket",
        "ratelimit.blocked_now",
        "amplification.addresses",
        "routing.refused.subnet",
        "store.bytes",
    ):
        assert key in metrics, key
    assert metrics["limit.rate_limit"] == server.config.rate_limit
