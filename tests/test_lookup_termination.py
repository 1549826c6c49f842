"""Every lookup ends: the lookup state machine (core/lookup.py) driven under random hostility.

A 10 000-node adversarial run once stopped with an operation that had not ended after 600
virtual seconds. This drives :class:`Lookup` and :class:`DisjointLookup` the way the engine
does (core/lookups.py over core/rpc.py: a soft timeout, then a grace period or an immediate
give-up, a hard timeout; an answer only from the address asked, to the request's txid; a
refused send fails the contact for good) against random peers: honest ones that know the
true neighbourhood, hostile ones that name anyone at false addresses (their own lie, or a lie
shared with other colluders so it gathers votes), answer with errors, leave, stay silent or
answer late; any peer may be slow or lost. Hypothesis draws the setting and the seed of the
run's choices.

The lookup must never sit idle unfinished (no request in flight and nothing to send, which is a
hang: nothing would ever wake it), its counters must match its candidates after every event,
and it must end within bounds: requests at most one per (path, node, address) the peers ever
named, and virtual time at most one hard timeout per request.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.lookup import CandidateState, Lookup
from nautilus_kad.core.lookup_disjoint import AnyLookup, DisjointLookup, new_lookup
from nautilus_kad.core.messages import Address, Contact

HARD = 2.0
"""The hard timeout (KadConfig.request_timeout)."""
FALSE_PORTS = 4
"""False addresses the colluders use per node id (their shared pool of lies)."""


@dataclass(frozen=True, slots=True)
class Setting:
    nodes: int
    hostile: float
    k: int
    alpha: int
    paths: int
    grace: float
    """0: the caller gives up on a slow request at its soft timeout (no grace)."""
    lossy: float
    """Chance an honest request is lost or answered too late."""
    refuse: float
    """Chance a send is refused (the request limit)."""
    seed: int


@dataclass(order=True, slots=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    txid: int = field(compare=False)


@dataclass(slots=True)
class _Request:
    node_id: NodeId
    address: Address
    answer: str
    """"nodes", "error", "departing" or "none"."""


class Network:
    """Peers and what each answers; all choices from one seeded generator."""

    def __init__(self, setting: Setting, target: NodeId) -> None:
        rng = self.rng = random.Random(setting.seed)
        self.setting = setting
        self.target = target
        self.ids = [NodeId.random(rng) for _ in range(setting.nodes)]
        self.address = {
            node_id: (f"10.0.{i // 250}.{i % 250 + 1}", 4000) for i, node_id in enumerate(self.ids)
        }
        hostile = round(setting.hostile * setting.nodes)
        self.hostile = set(rng.sample(self.ids, hostile))
        self.honest = [n for n in self.ids if n not in self.hostile]
        self.named: set[tuple[NodeId, Address]] = set()
        """Every (node, address) any answer named, or the seeds: what requests can go to."""

    def contact(self, node_id: NodeId) -> Contact:
        return Contact(node_id, *self.address[node_id])

    def lie(self, node_id: NodeId) -> Contact:
        host = self.address[node_id][0]
        return Contact(node_id, host, 5000 + self.rng.randrange(FALSE_PORTS))

    def seeds(self, count: int) -> list[Contact]:
        rng = self.rng
        chosen = rng.sample(self.ids, min(count, len(self.ids)))
        seeds = [self.lie(n) if rng.random() < 0.2 else self.contact(n) for n in chosen]
        self.named.update((c.node_id, c.address) for c in seeds)
        return seeds

    def behaviour(self, node_id: NodeId, address: Address) -> tuple[str, float | None]:
        """What a request to ``node_id`` at ``address`` brings, and when (None: never)."""
        rng = self.rng
        if address != self.address[node_id]:
            return "none", None  # nothing listens at a false address
        if node_id in self.hostile:
            kind = rng.choices(["nodes", "error", "departing", "none"], [6, 1, 1, 2])[0]
        else:
            kind = rng.choices(["nodes", "departing"], [19, 1])[0]
            if rng.random() < self.setting.lossy:
                kind = "none"
        if kind == "none":
            return kind, None
        # Fast, slow (past the soft timeout) or too late (past the hard timeout).
        delay = rng.choice([rng.uniform(0.01, 0.3), rng.uniform(0.3, 1.9), rng.uniform(2, 3)])
        return kind, delay

    def answer(self, node_id: NodeId) -> list[Contact]:
        rng = self.rng
        k = self.setting.k
        if node_id in self.hostile:
            contacts = []
            for other in rng.sample(self.ids, min(k, len(self.ids))):
                roll = rng.random()
                if roll < 0.5:
                    contacts.append(self.lie(other))
                elif roll < 0.6:  # a lie of its own, nobody else tells
                    host = self.address[other][0]
                    contacts.append(Contact(other, host, 6000 + rng.randrange(10_000)))
                else:
                    contacts.append(self.contact(other))
        else:
            target = self.target
            near = sorted(self.ids, key=lambda n: n ^ target)[: 2 * k]
            contacts = [self.contact(n) for n in rng.sample(near, min(k, len(near)))]
        self.named.update((c.node_id, c.address) for c in contacts)
        return contacts


def _check_counters(lookup: AnyLookup, pending: dict[int, _Request]) -> None:
    """Counters match the candidates; every request the lookup waits on is really in flight
    (a candidate waiting on a request nobody will ever answer or time out is a hang)."""
    paths = lookup.paths if isinstance(lookup, DisjointLookup) else [lookup]
    asked = {(r.node_id, r.address) for r in pending.values()}
    for path in paths:
        states = [path._by_distance[d] for d in path._distances]
        in_flight = [c for c in states if c.state is CandidateState.IN_FLIGHT]
        slow = [c for c in states if c.state is CandidateState.SLOW]
        assert path.in_flight == len(in_flight)
        assert path.slow == len(slow)
        for cand in in_flight + slow:
            assert (cand.contact.node_id, cand.contact.address) in asked, (
                f"path {path._path} waits on {cand.contact} ({cand.state.name}) "
                "but no request is in flight there"
            )


def run(setting: Setting) -> tuple[AnyLookup, int, float, Network]:
    """Drive one lookup to its end; returns it, the requests sent and the virtual time."""
    target = NodeId.random(random.Random(setting.seed ^ 0x5EED))
    net = Network(setting, target)
    rng = net.rng
    own = NodeId.random(rng)
    lookup = new_lookup(target, own, setting.k, setting.alpha, net.seeds(2 * setting.k),
                        setting.paths)  # fmt: skip
    events: list[_Event] = []
    pending: dict[int, _Request] = {}
    now = 0.0
    seq = 0
    sent = 0
    overloaded = False

    def push(at: float, kind: str, txid: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, _Event(at, seq, kind, txid))

    def advance() -> bool:
        """As Lookups.advance: send what the lookup asks for; True once it is over."""
        nonlocal sent, overloaded
        if not lookup.finished:
            for contact in lookup.next_queries():
                if rng.random() < setting.refuse:
                    lookup.on_failure(contact.node_id, contact.address, final=True)
                    overloaded = True
                    continue
                sent += 1
                txid = sent
                kind, delay = net.behaviour(contact.node_id, contact.address)
                pending[txid] = _Request(contact.node_id, contact.address, kind)
                push(now + rng.uniform(0.2, 1.0), "soft", txid)
                push(now + HARD, "hard", txid)
                if delay is not None:
                    push(now + delay, "answer", txid)
            if overloaded and lookup.in_flight == 0 and lookup.slow == 0:
                lookup.finish()
        return lookup.finished or lookup.is_done

    done = advance()
    steps = 0
    while not done:
        assert events, "the lookup is unfinished with nothing in flight: it would hang"
        event = heapq.heappop(events)
        now = event.at
        request = pending.get(event.txid)
        if request is None:
            continue  # timers of answered requests are skipped (rpc.Requests.run)
        node_id, address = request.node_id, request.address
        if event.kind == "answer":
            del pending[event.txid]
            if request.answer == "error":
                lookup.on_failure(node_id, address, final=True)
            elif request.answer == "departing":
                lookup.on_departing(node_id, net.answer(node_id), b"", address)
            else:
                lookup.on_response(node_id, net.answer(node_id), b"", address)
                if node_id not in net.hostile and rng.random() < 0.02:
                    lookup.finish()  # a get found its value
        elif event.kind == "soft":
            lookup.on_soft_timeout(node_id, address)
            if setting.grace > 0:
                push(now + setting.grace, "grace", event.txid)
            else:
                lookup.on_give_up(node_id, address)
        elif event.kind == "grace":
            lookup.on_give_up(node_id, address)
        else:  # hard
            del pending[event.txid]
            lookup.on_failure(node_id, address)
        done = advance()
        if not done:
            _check_counters(lookup, pending)
        steps += 1
        assert steps < 100_000
    return lookup, sent, now, net


settings_strategy = st.builds(
    Setting,
    nodes=st.integers(5, 80),
    hostile=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.8]),
    k=st.sampled_from([2, 4, 8, 20]),
    alpha=st.sampled_from([1, 2, 3]),
    paths=st.sampled_from([1, 2, 4, 8]),
    grace=st.sampled_from([0.0, 0.5]),
    lossy=st.sampled_from([0.0, 0.2, 0.6]),
    refuse=st.sampled_from([0.0, 0.0, 0.05]),
    seed=st.integers(0, 2**32 - 1),
)


@settings(max_examples=400, deadline=None)
@given(settings_strategy)
def test_every_lookup_ends_within_bounds(setting: Setting) -> None:
    lookup, sent, elapsed, net = run(setting)
    paths = setting.paths if setting.paths > 1 else 1
    # One request per (path, node, address) at most, and only to addresses somebody named.
    assert sent <= paths * len(net.named)
    # The lookup never waits longer than one hard timeout per request sent.
    assert elapsed <= HARD * max(1, sent) + 1.0
    assert lookup.is_done or lookup.finished


def test_a_path_never_asks_a_node_at_an_address_another_path_asked() -> None:
    """The hang the property test found. Path A asks X and goes slow; path B takes X over at
    another address, which goes slow too, and B then tries the address A asked. A second
    request to the same (node, address) sends the answer to B (answers are routed by node
    and address), and A waits on its slow request for ever. B must not ask there."""
    target, own = NodeId(0), NodeId(1 << 255)
    x, y = NodeId(4), NodeId(64)
    real, other = ("10.0.0.1", 4000), ("10.0.0.1", 5001)
    lookup = DisjointLookup(
        target, own, 2, 1, [Contact(x, *real), Contact(y, "10.0.0.2", 4000)], paths=2
    )
    a, b = lookup.paths
    assert lookup.next_queries() == [Contact(x, *real), Contact(y, "10.0.0.2", 4000)]
    lookup.on_soft_timeout(x, real)  # A's request is slow (and still awaited)
    # B hears X at a false address first, then at the real one: it takes X over.
    lookup.on_response(y, [Contact(x, *other), Contact(x, *real)], b"", ("10.0.0.2", 4000))
    assert lookup.next_queries() == [Contact(x, *other)]
    lookup.on_soft_timeout(x, other)  # silent there: B moves on to the real address ...
    assert lookup.next_queries() == []  # ... which A asked already: B does not ask it again
    lookup.on_response(x, [], b"", real)  # X answers A's request: A hears it
    assert a.candidate(x).state is CandidateState.RESPONDED  # type: ignore[union-attr]
    assert a.slow == 0 and a.in_flight == 0
    lookup.on_failure(x, other)  # B's request times out
    assert b.slow == 0 and b.in_flight == 0
    assert lookup.is_done
    assert isinstance(a, Lookup)
