"""Connects between random pairs of a network where most nodes sit behind NATs (issue 12
point 7): how many get a direct channel, how many a relayed one, how many fail, and how
much relaying each server does.

``nodes`` hosts join one after another through public nodes that already joined; a fraction
``natted`` of them sit behind a NAT box of their own (sim/nat.py), of a kind drawn from
``mix``. Reachability is the oracle's (sim/natscenario.py ``oracle``): every node behind a
NAT that drops unsolicited datagrams runs as a client, the others as servers, so what is
measured is NAT traversal alone, not the reachability test. Every node switches traversal
on (clients register with their rendezvous), the network settles, then ``connects``
connects start from random nodes towards random other nodes, ``rate`` per virtual second.

Each connect ends with a channel (its first path: ``direct`` or ``relayed``; a relayed one
may be upgraded to direct later, counted apart) or a failure code; one that ends with
neither by its deadline plus a margin counts as ``hung`` (must be 0). Over each channel the
initiator sends one datagram and the scenario checks the target received it (``delivered``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.config import KadConfig
from ..core.events import ChannelData, ChannelOpened, ChannelPath, ConnectFailed, Event
from .nat import FULL_CONE, NAT_TYPES, NatType
from .natscenario import DEFAULT_MIX
from .report import percentile
from .simulation import SimNode, Simulation, default_sim_config

PUBLIC = "public"


@dataclass(frozen=True, slots=True)
class ConnectScenarioSpec:
    nodes: int = 10_000
    natted: float = 0.9
    """Fraction of the nodes behind a NAT."""
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    """NAT kinds and their shares among the NATed nodes."""
    connects: int = 1000
    seed: int = 1
    join_rate: float = 100.0
    """Arrivals per virtual second."""
    rate: float = 20.0
    """Connects started per virtual second."""
    settle: float = 60.0
    """Virtual seconds between switching traversal on and the first connect."""
    timeout: float = 10.0
    """Each connect's own deadline (``Node.connect``'s default)."""
    loss: float = 0.0
    """Datagram loss of the simulated network."""
    config: KadConfig = field(default_factory=default_sim_config)

    def __post_init__(self) -> None:
        if not 0.0 <= self.natted < 1.0:
            raise ValueError("natted must lie in [0, 1)")
        if self.nodes < 3 or self.connects < 0 or self.rate <= 0 or self.timeout <= 0:
            raise ValueError("need at least 3 nodes, a positive rate and timeout")
        for kind, share in self.mix:
            if kind not in NAT_TYPES or share < 0:
                raise ValueError(f"bad NAT mix entry {kind!r}: {share}")
        if not sum(share for _, share in self.mix) > 0:
            raise ValueError("the NAT mix is empty")


@dataclass(slots=True, eq=False)
class Try:
    """One connect and what became of it."""

    source: SimNode
    target: SimNode
    pair: str
    """The two NAT kinds, sorted (``public`` for none): ``port-restricted x symmetric``."""
    start: float
    outcome: str = ""
    """``direct``, ``relayed``, ``failed:<code>``, or empty while running (``hung`` after)."""
    took: float = math.nan
    channel: int = 0
    upgraded: bool = False
    delivered: bool = False
    payload: bytes = b""


@dataclass(slots=True)
class ConnectScenarioResult:
    spec: ConnectScenarioSpec
    kinds: dict[str, int]
    """Nodes per NAT kind."""
    outcomes: Counter[str]
    """``direct`` / ``relayed`` / ``failed:<code>`` / ``hung`` over all connects."""
    by_pair: dict[str, Counter[str]]
    """The same per pair of NAT kinds."""
    took_p50: float
    took_p99: float
    """Virtual seconds from connect to channel (channels only)."""
    upgraded: int
    """Relayed channels that became direct later."""
    delivered: int
    """Channels over which the initiator's first datagram reached the target."""
    servers: int
    relaying_servers: int
    """Servers that opened at least one circuit."""
    circuits: list[int]
    """Circuits opened per relaying server."""
    relay_bytes: list[int]
    """Bytes relayed per relaying server."""
    registrations: list[int]
    """Registrations held per server at the end."""
    stats: Counter[str]
    """``nat.punch.*``, ``relay.*``, ``connect.*``, ``rendezvous.*`` summed over all nodes."""
    joined: int
    wall: float
    cpu: float
    digest: str

    def share(self, outcome: str) -> float:
        total = sum(self.outcomes.values())
        if outcome == "failed":
            part = sum(n for o, n in self.outcomes.items() if o.startswith("failed"))
        else:
            part = self.outcomes[outcome]
        return part / total if total else math.nan

    def row(self) -> dict[str, Any]:
        return {
            "nodes": self.spec.nodes,
            "natted": self.spec.natted,
            "connects": sum(self.outcomes.values()),
            "direct": self.share("direct"),
            "relayed": self.share("relayed"),
            "failed": self.share("failed"),
            "hung": self.outcomes["hung"],
            "took p50 s": self.took_p50,
            "took p99 s": self.took_p99,
            "upgraded": self.upgraded,
            "delivered": self.delivered,
            "servers": self.servers,
            "relaying servers": self.relaying_servers,
            "circuits max": max(self.circuits, default=0),
            "circuits p50": percentile(self.circuits, 50) if self.circuits else 0,
            "relay bytes max": max(self.relay_bytes, default=0),
            "registrations max": max(self.registrations, default=0),
            "wall s": self.wall,
            "cpu s": self.cpu,
        }


Progress = Callable[[str, int, int], None]


def nat_plan(spec: ConnectScenarioSpec, sim: Simulation) -> list[NatType | None]:
    """The NAT of every node in arrival order (None: public); the first node is public."""
    total = sum(share for _, share in spec.mix)
    natted = round(spec.nodes * spec.natted)
    plan: list[NatType | None] = []
    for kind, share in spec.mix:
        plan.extend([NAT_TYPES[kind]] * round(natted * share / total))
    plan = plan[: min(natted, spec.nodes - 1)]
    plan.extend([None] * (spec.nodes - len(plan)))
    rest = plan[1:]
    sim.rng.shuffle(rest)
    return [None, *rest] if None in plan else plan


def run_connect_scenario(
    spec: ConnectScenarioSpec, progress: Progress | None = None
) -> ConnectScenarioResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = Simulation(seed=spec.seed, config=spec.config, loss=spec.loss)
    names = {t: n for n, t in NAT_TYPES.items()}
    kind_of: dict[int, str] = {}
    public: list[SimNode] = []
    joins = []
    for n, nat_type in enumerate(nat_plan(spec, sim)):
        client = nat_type is not None and nat_type is not FULL_CONE
        node = sim.add_node(nat=nat_type, client_mode=client)
        kind_of[node.index] = PUBLIC if nat_type is None else names[nat_type]
        seeds = [s.address for s in sim.rng.sample(public, min(3, len(public)))]
        joins.append(sim.join(node, seeds))
        if nat_type is None:
            public.append(node)
        sim.run_for(1.0 / spec.join_rate)
        if progress is not None and (n + 1) % 500 == 0:
            progress("join", n + 1, spec.nodes)
    sim.wait(joins, timeout=600.0)
    everyone = list(sim.nodes.values())
    for node in everyone:
        node.engine.traversal.enable(sim.now)
        node.flush()
    sim.run_for(spec.settle)

    tries: dict[tuple[int, int], Try] = {}
    """(initiator index, connect query id) → its try."""
    by_channel: dict[tuple[int, int], Try] = {}
    """(initiator index, channel handle) → its try (for later path changes)."""
    expected: dict[tuple[int, bytes], Try] = {}
    """(target index, payload) → the try whose datagram it should receive."""

    def on_event(node: SimNode, event: Event) -> None:
        match event:
            case ChannelOpened(query_id=qid, channel=handle, path=path) if qid:
                attempt = tries.get((node.index, qid))
                if attempt is None or attempt.outcome:
                    return
                attempt.outcome, attempt.took = path, sim.now - attempt.start
                attempt.channel = handle
                by_channel[(node.index, handle)] = attempt
                attempt.payload = f"hello {node.index} {qid}".encode()
                expected[(attempt.target.index, attempt.payload)] = attempt
                node.engine.traversal.send(handle, attempt.payload, sim.now)
            case ConnectFailed(query_id=qid, code=code):
                attempt = tries.get((node.index, qid))
                if attempt is not None and not attempt.outcome:
                    attempt.outcome, attempt.took = f"failed:{code}", sim.now - attempt.start
            case ChannelPath(channel=handle, path="direct"):
                attempt = by_channel.get((node.index, handle))
                if attempt is not None and attempt.outcome == "relayed":
                    attempt.upgraded = True
            case ChannelData(data=data):
                attempt = expected.pop((node.index, data), None)
                if attempt is not None:
                    attempt.delivered = True
            case _:
                pass

    sim.event_listener = on_event
    for i in range(spec.connects):
        source, target = sim.rng.sample(everyone, 2)
        qid = source.engine.traversal.connect(target.node_id, sim.now, spec.timeout)
        pair = " x ".join(sorted((kind_of[source.index], kind_of[target.index])))
        tries[(source.index, qid)] = Try(source, target, pair, sim.now)
        source.flush()
        sim.run_for(sim.rng.expovariate(spec.rate))
        if progress is not None and (i + 1) % 100 == 0:
            progress("connect", i + 1, spec.connects)
    upgrade = spec.config.traversal.upgrade_interval * spec.config.traversal.upgrade_tries
    sim.run_for(spec.timeout + min(upgrade, 60.0) + 5.0)
    sim.event_listener = None

    outcomes: Counter[str] = Counter()
    by_pair: dict[str, Counter[str]] = {}
    for attempt in tries.values():
        outcome = attempt.outcome or "hung"
        outcomes[outcome] += 1
        by_pair.setdefault(attempt.pair, Counter())[outcome] += 1
    took = [t.took for t in tries.values() if t.outcome in ("direct", "relayed")]
    servers = [n for n in everyone if not n.engine.natlink.is_client]
    relaying = [n for n in servers if n.engine.stats["relay.circuits.opened"]]
    stats: Counter[str] = Counter()
    for node in everyone:
        for name, value in node.engine.stats.items():
            if name.startswith(("nat.punch.", "relay.", "connect.", "rendezvous.", "channel.")):
                stats[name] += value
    return ConnectScenarioResult(
        spec=spec,
        kinds=dict(Counter(kind_of.values())),
        outcomes=outcomes,
        by_pair=dict(sorted(by_pair.items())),
        took_p50=percentile(took, 50),
        took_p99=percentile(took, 99),
        upgraded=sum(t.upgraded for t in tries.values()),
        delivered=sum(t.delivered for t in tries.values()),
        servers=len(servers),
        relaying_servers=len(relaying),
        circuits=sorted(n.engine.stats["relay.circuits.opened"] for n in relaying),
        relay_bytes=sorted(n.engine.stats["relay.bytes"] for n in relaying),
        registrations=sorted(len(n.engine.traversal.registrations) for n in servers),
        stats=stats,
        joined=sum(1 for op in joins if op.succeeded),
        wall=time.perf_counter() - started,
        cpu=time.process_time() - cpu_started,
        digest=sim.digest(),
    )


def kind_pairs(result: ConnectScenarioResult) -> list[tuple[str, int, int, int]]:
    """(pair, direct, relayed, failed or hung) per pair of NAT kinds, for tables."""
    rows = []
    for pair, counts in result.by_pair.items():
        failed = sum(n for o, n in counts.items() if o.startswith("failed") or o == "hung")
        rows.append((pair, counts["direct"], counts["relayed"], failed))
    return rows


__all__ = [
    "ConnectScenarioResult",
    "ConnectScenarioSpec",
    "Try",
    "kind_pairs",
    "nat_plan",
    "run_connect_scenario",
]
