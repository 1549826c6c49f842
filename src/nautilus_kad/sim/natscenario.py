"""A network where most nodes sit behind NATs: how much the unreachable ones cost.

``nodes`` hosts join one after another through public nodes that already joined; a fraction
``natted`` of them sit behind a NAT box of their own, of a kind drawn from ``mix``. Then
``lookups`` lookups for random ids and ``puts`` puts run from random nodes, and each put is
read back by a get from a node behind a NAT other than the writer's.

``policy`` says how the NATed nodes behave:

* ``off`` — as every node did before reachability checks: each one claims to serve, its
  peers verify it with a PING that its NAT lets through (the PING goes to the very
  endpoint the node just contacted), so it enters their routing tables, is handed out in
  NODES answers, and whoever tries it later times out;
* ``oracle`` — each node behind a NAT that drops unsolicited datagrams (all kinds but full
  cone) runs in client mode from the start: what a perfect reachability test gives, the
  target of the measured one;
* ``probe`` — the measured one: the first ``seeds`` public nodes run in ``server`` mode (a
  network's bootstrap nodes), every other node in ``auto``, and the workload starts after
  ``settle`` seconds; lookups are judged against the nodes that are servers by then.

Measured: lookup success (the result reaches one of the true k closest *reachable* nodes,
the only ones that can hold records), get success, the request timeouts per operation and
the latency of lookups, and how many contacts in the routing tables of reachable nodes sit
behind NATs that drop unsolicited datagrams ("polluting contacts").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.config import KadConfig
from ..core.ids import NodeId, key_id
from .nat import FULL_CONE, NAT_TYPES, NatType
from .report import percentile
from .simulation import Operation, SimNode, Simulation, default_sim_config

POLICIES = ("off", "oracle", "probe")
DEFAULT_MIX = (
    ("full-cone", 0.1),
    ("address-restricted", 0.2),
    ("port-restricted", 0.4),
    ("symmetric", 0.3),
)


@dataclass(frozen=True, slots=True)
class NatScenarioSpec:
    nodes: int = 10_000
    natted: float = 0.9
    """Fraction of the nodes behind a NAT."""
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX
    """NAT kinds and their shares among the NATed nodes."""
    policy: str = "off"
    lookups: int = 1000
    puts: int = 200
    seed: int = 1
    join_rate: float = 100.0
    """Arrivals per virtual second."""
    op_rate: float = 50.0
    """Operations started per virtual second during the workload."""
    config: KadConfig = field(default_factory=default_sim_config)
    seeds: int = 10
    """``probe``: public nodes started in server mode."""
    settle: float = 600.0
    """``probe``: seconds between the last join and the workload."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        if not 0.0 <= self.natted < 1.0:
            raise ValueError("natted must lie in [0, 1)")
        if self.nodes < 2 or self.lookups < 0 or self.puts < 0:
            raise ValueError("need at least 2 nodes and non-negative counts")
        for kind, share in self.mix:
            if kind not in NAT_TYPES or share < 0:
                raise ValueError(f"bad NAT mix entry {kind!r}: {share}")
        if not sum(share for _, share in self.mix) > 0:
            raise ValueError("the NAT mix is empty")


@dataclass(slots=True)
class NatScenarioResult:
    spec: NatScenarioSpec
    kinds: dict[str, int]
    """Nodes per NAT kind (``public`` for none)."""
    lookup_success: float
    lookup_p50: float
    lookup_p99: float
    get_success: float
    put_success: float
    timeouts_per_op: float
    polluting_contacts: int
    """Contacts behind NATs that drop unsolicited datagrams, in reachable nodes' tables."""
    tables_polluted: float
    """Share of reachable nodes whose table holds at least one such contact."""
    joined: int
    wall: float
    cpu: float
    """CPU seconds of this process for the run (the machine may be shared: compare these)."""
    digest: str
    servers: int = 0
    """Nodes in server mode when the workload started."""
    reachable_clients: int = 0
    """Public or full-cone nodes still clients when the workload started."""
    hidden_servers: int = 0
    """Nodes behind NATs that drop unsolicited datagrams that became servers (must be 0)."""

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.spec.policy,
            "nodes": self.spec.nodes,
            "natted": self.spec.natted,
            "lookup success": self.lookup_success,
            "lookup p50 s": self.lookup_p50,
            "lookup p99 s": self.lookup_p99,
            "get success": self.get_success,
            "put success": self.put_success,
            "timeouts/op": self.timeouts_per_op,
            "polluting contacts": self.polluting_contacts,
            "servers": self.servers,
            "reachable clients": self.reachable_clients,
            "hidden servers": self.hidden_servers,
            "tables polluted": self.tables_polluted,
            "wall s": self.wall,
            "cpu s": self.cpu,
        }


Progress = Callable[[str, int, int], None]


def _kinds(spec: NatScenarioSpec, sim: Simulation) -> list[NatType | None]:
    """The NAT of every node, in arrival order (None: public). The first node is public."""
    total = sum(share for _, share in spec.mix)
    natted = round(spec.nodes * spec.natted)
    plan: list[NatType | None] = []
    for kind, share in spec.mix:
        plan.extend([NAT_TYPES[kind]] * round(natted * share / total))
    plan = plan[:natted]
    plan.extend([None] * (spec.nodes - len(plan)))
    rest = plan[1:]
    sim.rng.shuffle(rest)
    return [None, *rest] if None in plan else plan


def run_nat_scenario(spec: NatScenarioSpec, progress: Progress | None = None) -> NatScenarioResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    sim = Simulation(seed=spec.seed, config=spec.config)
    plan = _kinds(spec, sim)
    reachable: list[SimNode] = []
    public: list[SimNode] = []
    """Nodes with no NAT: the bootstrap nodes (a NATed node's own address is private)."""
    hidden: list[SimNode] = []
    """Nodes behind NATs that drop unsolicited datagrams."""
    kinds: dict[str, int] = {}
    names = {t: n for n, t in NAT_TYPES.items()}
    joins: list[Operation] = []
    for n, nat_type in enumerate(plan):
        is_hidden = nat_type is not None and nat_type is not FULL_CONE
        client = is_hidden and spec.policy == "oracle"
        mode = None
        if spec.policy == "probe":
            mode = "server" if nat_type is None and len(public) < spec.seeds else "auto"
        node = sim.add_node(nat=nat_type, client_mode=client, mode=mode)
        name = "public" if nat_type is None else names[nat_type]
        kinds[name] = kinds.get(name, 0) + 1
        if is_hidden:
            hidden.append(node)
            sim.live.discard(node.node_id)  # cannot hold records: not a lookup target
        if not public:
            joins.append(sim.join(node, []))
        else:
            pool = public[: spec.seeds] if spec.policy == "probe" else public
            seeds = [s.address for s in sim.rng.sample(pool, min(3, len(pool)))]
            joins.append(sim.join(node, seeds))
        if not is_hidden:
            reachable.append(node)
        if nat_type is None:
            public.append(node)
        sim.run_for(1.0 / spec.join_rate)
        if progress is not None and (n + 1) % 500 == 0:
            progress("join", n + 1, spec.nodes)
    sim.wait(joins, timeout=600.0)
    sim.run_for(spec.settle if spec.policy == "probe" else 30.0)
    servers = reachable_clients = hidden_servers = 0
    if spec.policy == "probe":
        hidden_set = set(map(id, hidden))
        for node in sim.nodes.values():
            client = node.engine.nat.is_client
            if client:
                sim.live.discard(node.node_id)  # judge lookups against the servers
                reachable_clients += id(node) not in hidden_set
            else:
                servers += 1
                hidden_servers += id(node) in hidden_set
    joined = sum(1 for op in joins if op.succeeded)
    before = sum(node.engine.stats["tx.timeouts"] for node in sim.nodes.values())

    everyone = list(sim.nodes.values())
    ops: list[Operation] = []
    gets: list[Operation] = []
    puts: list[Operation] = []

    def read_back(op: Operation) -> None:
        if op.target is None:
            return
        writer = op.node
        others = [h for h in sim.rng.sample(hidden, min(4, len(hidden))) if h is not writer]
        reader = others[0] if others else sim.rng.choice(everyone)
        value = op.expect
        gets.append(sim.get(reader, op.target, value))

    total_ops = spec.lookups + spec.puts
    order = ["lookup"] * spec.lookups + ["put"] * spec.puts
    sim.rng.shuffle(order)
    for i, kind in enumerate(order):
        if kind == "lookup":
            ops.append(sim.lookup(sim.rng.choice(everyone), NodeId(sim.rng.getrandbits(256))))
        else:
            writer = sim.rng.choice(hidden) if hidden else sim.rng.choice(everyone)
            key = key_id(f"nat-scenario-{i}".encode())
            op = sim.put(writer, key, f"value-{i}".encode())
            op.on_done = read_back
            puts.append(op)
        sim.run_for(sim.rng.expovariate(spec.op_rate))
        if progress is not None and (i + 1) % 500 == 0:
            progress("workload", i + 1, total_ops)
    sim.wait(ops + puts, timeout=600.0)
    sim.wait(gets, timeout=600.0)
    after = sum(node.engine.stats["tx.timeouts"] for node in sim.nodes.values())

    hidden_ids = {node.node_id for node in hidden}
    polluting = 0
    polluted_tables = 0
    for node in reachable:
        bad = sum(1 for contact in node.engine.table if contact.node_id in hidden_ids)
        polluting += bad
        polluted_tables += bad > 0
    lookups = [op.record for op in ops if op.record is not None]
    latencies = [r.latency for r in lookups]
    finished = len(lookups) + len(puts) + len(gets)
    return NatScenarioResult(
        spec=spec,
        kinds=kinds,
        lookup_success=_share(sum(r.success for r in lookups), len(ops)),
        lookup_p50=percentile(latencies, 50),
        lookup_p99=percentile(latencies, 99),
        get_success=_share(sum(op.succeeded for op in gets), len(gets)),
        put_success=_share(sum(op.succeeded for op in puts), len(puts)),
        timeouts_per_op=(after - before) / finished if finished else math.nan,
        polluting_contacts=polluting,
        tables_polluted=_share(polluted_tables, len(reachable)),
        joined=joined,
        servers=servers,
        reachable_clients=reachable_clients,
        hidden_servers=hidden_servers,
        wall=time.perf_counter() - started,
        cpu=time.process_time() - cpu_started,
        digest=sim.digest(),
    )


def _share(part: int, whole: int) -> float:
    return part / whole if whole else math.nan
