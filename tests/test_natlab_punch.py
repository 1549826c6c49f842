"""The NAT lab's part-2 variants checked with plain UDP sockets, before any protocol runs on
them: which NAT pairs two sockets can punch through (RFC 4787: every pair of endpoint-
independent mappings, and an endpoint-dependent mapping against a NAT that filters by
address only or not at all; never symmetric against port-restricted or symmetric), two
hosts behind one NAT with and without hairpinning, a binding timeout shorter than the idle
time with and without keepalives, and 20 % loss.

The punch is what any hole-punching protocol does at its core: both sides learn the other's
mapping from a public rendezvous socket, both send to it every 100 ms, and each also sends
to any source it hears the other from (a peer-reflexive address, ICE-style).

These need root, ``ip`` and ``nft``; they skip without them, and fail when ``CI`` is set.
"""

from __future__ import annotations

import itertools
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.natlab import NAT_KINDS, Host, NatLab, require_lab
from tests.test_natlab import Agent

pytestmark = pytest.mark.natlab

PUNCHER = r"""
import select, socket, sys, time
name = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
print("ready", flush=True)
targets, peer, until, heard = set(), None, 0.0, set()
next_send = 0.0
while True:
    now = time.monotonic()
    wait = max(0.0, min(next_send, until) - now) if now < until else None
    ready, _, _ = select.select([sys.stdin, s], [], [], wait)
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        words = line.split()
        if words[0] == "send":
            s.sendto(words[3].encode(), (words[1], int(words[2])))
        elif words[0] == "punch":  # punch PEER WINDOW ip:port...
            peer, until = words[1], time.monotonic() + float(words[2])
            targets = {(a.split(":")[0], int(a.split(":")[1])) for a in words[3:]}
            next_send = 0.0
    if s in ready:
        data, src = s.recvfrom(2048)
        text = data.decode(errors="replace")
        print("recv", src[0], src[1], text, flush=True)
        if peer is not None and text == f"punch:{peer}" and src not in heard:
            heard.add(src)
            targets.add(src)
    now = time.monotonic()
    if now < until and now >= next_send:
        for target in sorted(targets):
            s.sendto(f"punch:{name}".encode(), target)
        next_send = now + 0.1
"""


BURST = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(300):
    s.sendto(f"n{i}".encode(), (sys.argv[1], int(sys.argv[2])))
for _ in range(10):
    s.sendto(b"end", (sys.argv[1], int(sys.argv[2])))
"""


class Puncher:
    """One UDP socket in a lab host that registers with a rendezvous and punches."""

    def __init__(self, lab: NatLab, host: Host, name: str, port: int) -> None:
        self.host, self.name, self.port = host, name, port
        self.process = lab.spawn(
            host,
            [sys.executable, "-c", PUNCHER, name, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.lines.get(timeout=10) == "ready"
        self.heard: dict[str, tuple[str, int]] = {}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def poll(self) -> None:
        """Take in what the socket received so far: who sent ``punch:NAME`` from where."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            _, ip, port, text = line.split()
            if text.startswith("punch:"):
                self.heard.setdefault(text[len("punch:") :], (ip, int(port)))

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


_ports = itertools.count(20000)


def observed(rendezvous: Agent, puncher: Puncher) -> tuple[str, int]:
    """The mapping the rendezvous sees for ``puncher`` (it sends one registration)."""
    payload = f"reg-{puncher.name}-{puncher.port}"
    puncher.command(f"send {RENDEZVOUS_IP} 3478 {payload}")
    seen = rendezvous.received(payload, 3.0)
    assert seen is not None, f"{puncher.name} never reached the rendezvous"
    return seen[1], seen[2]


RENDEZVOUS_IP = "10.200.10.10"  # the lab's first public host


def punch(
    lab: NatLab,
    rendezvous: Agent,
    a: Host,
    b: Host,
    *,
    lan: bool = False,
    window: float = 2.0,
) -> float | None:
    """Seconds until fresh sockets on ``a`` and ``b`` heard each other, or None when they
    did not within ``window``. They punch towards the mappings the rendezvous observed
    (and towards each other's LAN address too when ``lan``)."""
    port = next(_ports)
    pa, pb = Puncher(lab, a, f"a{port}", port), Puncher(lab, b, f"b{port}", port + 1)
    try:
        ma, mb = observed(rendezvous, pa), observed(rendezvous, pb)
        ta, tb = [f"{mb[0]}:{mb[1]}"], [f"{ma[0]}:{ma[1]}"]
        if lan:
            ta.append(f"{b.ip}:{pb.port}")
            tb.append(f"{a.ip}:{pa.port}")
        start = time.monotonic()
        pa.command(f"punch {pb.name} {window} {' '.join(ta)}")
        pb.command(f"punch {pa.name} {window} {' '.join(tb)}")
        while time.monotonic() - start < window + 0.5:
            pa.poll()
            pb.poll()
            if pb.name in pa.heard and pa.name in pb.heard:
                return time.monotonic() - start
            time.sleep(0.01)
        return None
    finally:
        pa.stop()
        pb.stop()


KINDS = ("public", *NAT_KINDS)


def punchable(x: str, y: str) -> bool:
    """RFC 4787: an endpoint-dependent mapping (symmetric) gets through only to a peer whose
    filter ignores the port (public, full cone, address-restricted)."""
    return {x, y} not in ({"symmetric", "port-restricted"}, {"symmetric"})


class Lab:
    """One lab for the whole module: a rendezvous, two hosts of each kind (each NATed one
    behind a NAT of its own), and two pairs of hosts sharing one NAT, with and without
    hairpinning."""

    def __init__(self, lab: NatLab) -> None:
        self.lab = lab
        server = lab.add_public()
        assert server.ip == RENDEZVOUS_IP
        self.rendezvous = Agent(lab, server, 3478)
        self.hosts: dict[str, list[Host]] = {"public": [lab.add_public(), lab.add_public()]}
        for kind in NAT_KINDS:
            self.hosts[kind] = [lab.add_natted(kind), lab.add_natted(kind)]
        self.hairpin = lab.add_nat("port-restricted", 2, hairpin=True)
        self.no_hairpin = lab.add_nat("port-restricted", 2)


@pytest.fixture(scope="module")
def world() -> Iterator[Lab]:
    require_lab()
    with NatLab() as lab:
        yield Lab(lab)


PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.mark.parametrize(("x", "y"), PAIRS, ids=[f"{x}--{y}" for x, y in PAIRS])
def test_two_sockets_punch_exactly_where_rfc4787_allows(world: Lab, x: str, y: str) -> None:
    a = world.hosts[x][0]
    b = world.hosts[y][1] if x == y else world.hosts[y][0]
    took = punch(world.lab, world.rendezvous, a, b)
    assert (took is not None) is punchable(x, y), (x, y, took)
    if took is not None:
        assert took < 1.0  # one or two rounds of 100 ms on an idle lab


def test_same_nat_with_hairpinning_punches_on_the_external_addresses(world: Lab) -> None:
    a, b = world.hairpin
    assert punch(world.lab, world.rendezvous, a, b) is not None
    # and what a receiver sees is the sender's mapping, not its LAN address
    pa, pb = Puncher(world.lab, a, "hp-a", 21990), Puncher(world.lab, b, "hp-b", 21991)
    try:
        ma, mb = observed(world.rendezvous, pa), observed(world.rendezvous, pb)
        pa.command(f"punch hp-b 1.0 {mb[0]}:{mb[1]}")
        deadline = time.monotonic() + 3.0
        while "hp-a" not in pb.heard and time.monotonic() < deadline:
            pb.poll()
            time.sleep(0.01)
        assert pb.heard.get("hp-a") == ma
    finally:
        pa.stop()
        pb.stop()


def test_same_nat_without_hairpinning_needs_the_lan_addresses(world: Lab) -> None:
    a, b = world.no_hairpin
    assert punch(world.lab, world.rendezvous, a, b, window=1.0) is None
    assert punch(world.lab, world.rendezvous, a, b, lan=True) is not None


def test_a_short_binding_timeout_closes_an_idle_mapping_unless_kept_alive() -> None:
    """A port-restricted NAT forgetting mappings after 2 s: the rendezvous can reach the
    host 4 s after its last datagram only if the host sent keepalives (every 0.6 s)."""
    require_lab()
    with NatLab() as lab:
        server = Agent(lab, lab.add_public(), 3478)
        short = lab.add_natted("port-restricted", binding_timeout=2)
        for keepalive in (False, True):
            host = Agent(lab, short, 5000 + keepalive)
            host.send(5000 + keepalive, (RENDEZVOUS_IP, 3478), f"hello{keepalive}")
            seen = server.received(f"hello{keepalive}")
            assert seen is not None
            mapping = (seen[1], seen[2])
            idle_until = time.monotonic() + 4.0
            while time.monotonic() < idle_until:
                if keepalive:
                    host.send(5000 + keepalive, (RENDEZVOUS_IP, 3478), "keepalive")
                time.sleep(0.6)
            server.send(3478, mapping, f"late{keepalive}")
            assert (host.received(f"late{keepalive}", 1.5) is not None) is keepalive


def test_loss_drops_about_the_share_asked_and_punching_still_works() -> None:
    """20 % loss on the internet bridge: of 300 datagrams about 240 arrive, and a
    port-restricted pair still punches in every one of 5 tries within 2 s."""
    require_lab()
    with NatLab() as lab:
        server = Agent(lab, lab.add_public(), 3478)
        a, b = lab.add_natted("port-restricted"), lab.add_natted("port-restricted")
        lab.set_loss(20)
        # one process sends them all (then markers behind them on the same path: once one
        # is in, all are), not an agent fed line by line that may lag behind
        lab.run(lab.add_public(), [sys.executable, "-c", BURST, RENDEZVOUS_IP, "3478"])
        assert server.received("end", 10.0) is not None
        arrived = sum(server.received(f"n{i}", 0.0) is not None for i in range(300))
        assert 195 <= arrived <= 285, arrived  # mean 240, sd 6.9
        lab.set_loss(0)  # registration is not what is under test
        punches: list[float | None] = []
        for _ in range(5):
            lab.set_loss(0)
            port = next(_ports)
            pa, pb = Puncher(lab, a, f"a{port}", port), Puncher(lab, b, f"b{port}", port + 1)
            try:
                ma, mb = observed(server, pa), observed(server, pb)
                lab.set_loss(20)
                start = time.monotonic()
                pa.command(f"punch {pb.name} 2.0 {mb[0]}:{mb[1]}")
                pb.command(f"punch {pa.name} 2.0 {ma[0]}:{ma[1]}")
                took = None
                while time.monotonic() - start < 2.5:
                    pa.poll()
                    pb.poll()
                    if pb.name in pa.heard and pa.name in pb.heard:
                        took = time.monotonic() - start
                        break
                    time.sleep(0.01)
                punches.append(took)
            finally:
                pa.stop()
                pb.stop()
        assert all(t is not None and t < 2.0 for t in punches), punches


def test_bad_variants_are_refused_before_anything_is_built() -> None:
    require_lab()
    with NatLab() as lab:
        with pytest.raises(ValueError, match="one host"):
            lab.add_nat("full-cone", 2)
        with pytest.raises(ValueError, match="two hosts"):
            lab.add_nat("port-restricted", 1, hairpin=True)
        with pytest.raises(ValueError, match="percentage"):
            lab.set_loss(120)
        assert len(lab.namespaces) == 1  # the "internet" only
