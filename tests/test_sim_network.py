"""The simulated network (sim/network.py) and the simulator's authenticator (sim/auth.py)."""

from __future__ import annotations

import random
import statistics

import pytest

from nautilus_kad.core.codec import decode_datagram, encode_message
from nautilus_kad.core.errors import DecodeError
from nautilus_kad.core.events import PingDone
from nautilus_kad.core.identity import Identity, node_id_for
from nautilus_kad.core.messages import Address, Ping
from nautilus_kad.sim.auth import SimAuthenticator, SimKeyring
from nautilus_kad.sim.network import (
    ConstantLatency,
    LogNormalLatency,
    Network,
    UniformLatency,
    parse_duration,
    parse_latency,
)
from nautilus_kad.sim.scheduler import Scheduler
from nautilus_kad.sim.simulation import Simulation


class Inbox:
    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.got: list[tuple[float, bytes, Address]] = []

    def __call__(self, data: bytes, source: Address) -> None:
        self.got.append((self.sched.now, data, source))


def make_net(
    n: int, *, seed: int = 1, loss: float = 0.0, jitter: float = 0.0, **kw: object
) -> tuple[Scheduler, Network, list[Inbox]]:
    sched = Scheduler()
    net = Network(sched, random.Random(seed), seed=seed, loss=loss, jitter=jitter, **kw)  # type: ignore[arg-type]
    boxes = []
    for i in range(n):
        box = Inbox(sched)
        net.attach((f"10.0.0.{i + 1}", 4000), box)
        boxes.append(box)
    return sched, net, boxes


def addr(i: int) -> Address:
    return (f"10.0.0.{i + 1}", 4000)


# --- latency ---------------------------------------------------------------------------------


def test_latency_models() -> None:
    model = LogNormalLatency(median=0.040, sigma=0.6)
    assert model.quantile(0.5) == pytest.approx(0.040)
    assert model.quantile(0.01) < 0.040 < model.quantile(0.99) < 0.2
    assert LogNormalLatency(0.04, 0.0).quantile(0.99) == 0.04
    assert ConstantLatency(0.02).quantile(0.3) == 0.02
    assert UniformLatency(0.01, 0.03).quantile(0.5) == pytest.approx(0.02)
    with pytest.raises(ValueError):
        LogNormalLatency(median=0)
    with pytest.raises(ValueError):
        UniformLatency(0.2, 0.1)


def test_parse_latency_and_durations() -> None:
    assert parse_duration("40ms") == pytest.approx(0.04)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("7") == 7
    assert parse_latency("lognormal") == LogNormalLatency()
    assert parse_latency("lognormal:20ms,0.3") == LogNormalLatency(0.02, 0.3)
    assert parse_latency("constant:5ms") == ConstantLatency(0.005)
    assert parse_latency("uniform:10ms,100ms") == UniformLatency(0.01, 0.1)
    for bad in ("", "gauss:1", "constant", "uniform:1ms", "lognormal:-3ms", "constant:x"):
        with pytest.raises(ValueError):
            parse_latency(bad)


def test_link_delays_are_fixed_per_link_symmetric_and_follow_the_model() -> None:
    _, net, _ = make_net(120, seed=5)
    eps = [net.endpoint(addr(i)) for i in range(120)]
    assert all(e is not None for e in eps)
    ends = [e for e in eps if e is not None]
    delays = []
    for i in range(120):
        for j in range(i + 1, 120):
            d = net.link_delay(ends[i], ends[j])
            assert d == net.link_delay(ends[j], ends[i])
            delays.append(d)
    # 7140 links drawn from the default log-normal (median 40 ms, sigma 0.6)
    assert statistics.median(delays) == pytest.approx(0.040, rel=0.05)
    assert len(set(delays)) > 5000  # links differ
    ordered = sorted(delays)
    assert ordered[int(0.99 * len(ordered))] == pytest.approx(
        LogNormalLatency().quantile(0.99), rel=0.1
    )
    # same seed, same delays; another seed, others
    _, again, _ = make_net(120, seed=5)
    _, other, _ = make_net(120, seed=6)
    a0, a1 = again.endpoint(addr(0)), again.endpoint(addr(1))
    o0, o1 = other.endpoint(addr(0)), other.endpoint(addr(1))
    assert a0 and a1 and o0 and o1
    assert again.link_delay(a0, a1) == net.link_delay(ends[0], ends[1])
    assert other.link_delay(o0, o1) != net.link_delay(ends[0], ends[1])


def test_delivery_takes_the_link_delay_plus_bounded_jitter() -> None:
    sched, net, boxes = make_net(2, jitter=0.2)
    src, dst = net.endpoint(addr(0)), net.endpoint(addr(1))
    assert src is not None and dst is not None
    base = net.link_delay(src, dst)
    for n in range(200):
        net.send(src, b"x%d" % n, addr(1))
    sched.run()
    times = [t for t, _, _ in boxes[1].got]
    assert len(times) == 200
    assert all(base <= t <= base * 1.2 for t in times)
    assert max(times) > min(times)  # jitter can reorder datagrams
    assert all(s == addr(0) for _, _, s in boxes[1].got)


# --- loss, down hosts, partitions ----------------------------------------------------------


def test_loss_rate() -> None:
    sched, net, boxes = make_net(2, loss=0.1)
    src = net.endpoint(addr(0))
    assert src is not None
    for n in range(5000):
        net.send(src, b"%d" % n, addr(1))
    sched.run()
    got = len(boxes[1].got)
    assert net.stats.lost + got == 5000
    assert 4350 < got < 4650  # 10% loss, well within 5 sigma
    with pytest.raises(ValueError):
        net.loss = 1.0


def test_down_and_unknown_hosts_swallow_datagrams_even_in_flight() -> None:
    sched, net, boxes = make_net(3)
    src = net.endpoint(addr(0))
    assert src is not None
    net.send(src, b"early", addr(1))  # in flight when host 1 goes down
    net.set_up(addr(1), False)
    net.send(src, b"late", addr(1))
    net.send(src, b"nobody", ("10.9.9.9", 1))
    sched.run()
    assert boxes[1].got == []
    assert net.stats.to_down == 3
    net.set_up(addr(1), True)
    net.send(src, b"back", addr(1))
    sched.run()
    assert [d for _, d, _ in boxes[1].got] == [b"back"]
    net.detach(addr(2))
    net.send(src, b"gone", addr(2))
    sched.run()
    assert boxes[2].got == []


def test_partition_and_heal() -> None:
    sched, net, boxes = make_net(4)
    eps = [net.endpoint(addr(i)) for i in range(4)]
    ends = [e for e in eps if e is not None]
    net.partition([[addr(0), addr(1)]])  # {0, 1} | {2, 3}
    for i in range(4):
        for j in range(4):
            if i != j:
                net.send(ends[i], b"%d>%d" % (i, j), addr(j))
    sched.run()
    reached = {data for box in boxes for _, data, _ in box.got}
    assert reached == {b"0>1", b"1>0", b"2>3", b"3>2"}
    assert net.stats.partitioned == 8
    # a datagram in flight when the partition starts is cut too
    net.heal()
    net.send(ends[0], b"in flight", addr(3))
    net.partition([[addr(0)]])
    sched.run()
    assert all(d != b"in flight" for _, d, _ in boxes[3].got)
    net.heal()
    net.send(ends[0], b"healed", addr(3))
    sched.run()
    assert boxes[3].got[-1][1] == b"healed"


def test_trace_digest_depends_on_every_datagram() -> None:
    def run(payload: bytes) -> str | None:
        sched, net, _ = make_net(3, loss=0.2, jitter=0.1)
        net.enable_trace()
        src = net.endpoint(addr(0))
        assert src is not None
        for n in range(50):
            net.send(src, payload + b"%d" % n, addr(n % 3))
        sched.run()
        return net.trace_digest()

    assert run(b"a") == run(b"a")
    assert run(b"a") != run(b"b")


# --- the simulator's authenticator -----------------------------------------------------------


def test_sim_authenticator_goes_through_the_real_codec() -> None:
    rng = random.Random(3)
    keyring = SimKeyring(rng.randbytes(32))
    alice, bob = Identity.generate(rng), Identity.generate(rng)
    a, b = SimAuthenticator(alice, keyring), SimAuthenticator(bob, keyring)
    data = encode_message(Ping(), b"12345678", a)
    envelope = decode_datagram(data, b)
    assert envelope.sender_id == alice.node_id == node_id_for(alice.public_key)
    assert envelope.sender_key == alice.public_key
    # one flipped bit anywhere, tag or payload, and the datagram is refused
    for pos in (len(data) - 1, 5, len(data) - 70):
        bad = bytearray(data)
        bad[pos] ^= 1
        with pytest.raises(DecodeError):
            decode_datagram(bytes(bad), b)
    # another simulation's key does not verify
    stranger = SimAuthenticator(bob, SimKeyring(rng.randbytes(32)))
    with pytest.raises(DecodeError) as exc:
        decode_datagram(data, stranger)
    assert exc.value.reason == "signature"
    with pytest.raises(ValueError):
        SimKeyring(b"short")


def test_engines_talk_through_encoder_network_and_decoder() -> None:
    for real in (False, True):
        sim = Simulation(seed=4, real_crypto=real)
        a, b = sim.add_node(), sim.add_node()
        assert (type(a.engine.auth) is SimAuthenticator) is not real
        op = sim.ping(a, b.address)
        assert sim.wait([op])
        assert op.succeeded
        assert isinstance(op.result, PingDone)
        assert op.result.contact.node_id == b.node_id
        assert op.record is not None
        # one round trip over the link, both ways
        ea, eb = sim.network.endpoint(a.address), sim.network.endpoint(b.address)
        assert ea is not None and eb is not None
        assert op.record.latency >= 2 * sim.network.link_delay(ea, eb)
        assert a.engine.stats["rx.response.PONG"] >= 1
        assert b.engine.stats["rx.request.PING"] >= 1
        # b verified a stranger's request with a PING of its own: now both know each other
        sim.run_for(5)
        assert a.node_id in b.engine.table
        assert b.node_id in a.engine.table
        assert a.engine.stats["rx.dropped"] == b.engine.stats["rx.dropped"] == 0


def test_sim_key_agreement_is_symmetric_and_sessions_form() -> None:
    rng = random.Random(9)
    keyring = SimKeyring(rng.randbytes(32))
    a = SimAuthenticator(Identity.generate(rng), keyring)
    b = SimAuthenticator(Identity.generate(rng), keyring)
    a_priv, a_pub = a.new_ephemeral(rng)
    b_priv, b_pub = b.new_ephemeral(rng)
    shared = a.agree(a_priv, b_pub)
    assert shared is not None and len(shared) == 32
    assert shared == b.agree(b_priv, a_pub)
    assert shared != a.agree(a_priv, a.new_ephemeral(rng)[1])
    assert a.agree(a_priv, b"short") is None
    # Peers that answer each other repeatedly agree sessions and then use them.
    sim = Simulation(seed=9)
    sim.grow(40)
    nodes = list(sim.joined)
    ops = [sim.ping(x, y.address) for x in nodes[:5] for y in nodes[5:10] for _ in range(3)]
    assert sim.wait(ops) and all(op.succeeded for op in ops)
    established = sum(n.engine.stats["session.established"] for n in nodes)
    over_sessions = sum(n.engine.stats["rx.session"] for n in nodes)
    assert established > 0 and over_sessions > 0


def test_a_datagram_takes_its_link_delay_without_jitter() -> None:
    """send() computes the link's delay inline: the arrival time is link_delay's, both
    ways, on every link."""
    sched, net, inboxes = make_net(30, seed=8)
    ends = [net.endpoint(addr(i)) for i in range(30)]
    rng = random.Random(2)
    for _ in range(200):
        i, j = rng.sample(range(30), 2)
        a, b = ends[i], ends[j]
        assert a is not None and b is not None
        start = sched.now
        net.send(a, b"x", addr(j))
        sched.run()
        when, _, source = inboxes[j].got[-1]
        assert source == addr(i)
        assert when == start + net.link_delay(a, b)
