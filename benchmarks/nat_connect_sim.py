"""NAT traversal in the simulator (issue 12 point 7): connects between random pairs.

    python -m benchmarks.nat_connect_sim                  # 10 000 nodes, 90% NATed, 1 000 connects
    python -m benchmarks.nat_connect_sim --nodes 2000 --connects 300
    python -m benchmarks.nat_connect_sim --loss 0.2       # 20 % datagram loss

Nodes join (90 % behind NATs of mixed kinds: 10 % full cone, 20 % address-restricted, 40 %
port-restricted, 30 % symmetric), unreachable ones as clients; every node switches NAT
traversal on, then connects run between random pairs (sim/connectscenario.py). Prints the
share of direct, relayed and failed connects, the time to a channel, the outcome per pair
of NAT kinds, and the relay load per server. Benchmarks report; they never assert.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich.console import Console
from rich.table import Table

from nautilus_kad.core.natconfig import NatConfig
from nautilus_kad.sim.connectscenario import ConnectScenarioSpec, kind_pairs, run_connect_scenario
from nautilus_kad.sim.report import percentile
from nautilus_kad.sim.simulation import default_sim_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--natted", type=float, default=0.9)
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    spec = ConnectScenarioSpec(
        nodes=args.nodes,
        natted=args.natted,
        connects=args.connects,
        loss=args.loss,
        seed=args.seed,
        # The simulator numbers hosts densely (254 to a /24): observers count per IP.
        config=default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32)),
    )
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5 or done == total:
            last[0] = now
            console.print(f"  {phase} {done}/{total}")

    result = run_connect_scenario(spec, progress)
    row = result.row()
    out = Console(width=160)
    title = (
        f"{args.nodes} nodes, {args.natted:.0%} behind NATs, {args.connects} connects, "
        f"loss {args.loss:.0%} (seed {args.seed})"
    )
    table = Table(title=title)
    for name in ("direct", "relayed", "failed", "hung", "took p50 s", "took p99 s",
                 "upgraded", "delivered", "wall s", "cpu s"):  # fmt: skip
        table.add_column(name, justify="right")
    table.add_row(
        f"{row['direct']:.1%}",
        f"{row['relayed']:.1%}",
        f"{row['failed']:.1%}",
        str(row["hung"]),
        f"{row['took p50 s']:.2f}",
        f"{row['took p99 s']:.2f}",
        str(row["upgraded"]),
        str(row["delivered"]),
        f"{row['wall s']:.0f}",
        f"{row['cpu s']:.0f}",
    )
    out.print(table)
    pairs = Table(title="per pair of NAT kinds")
    for name in ("pair", "direct", "relayed", "failed"):
        pairs.add_column(name, justify="right")
    for pair, direct, relayed, failed in kind_pairs(result):
        pairs.add_row(pair, str(direct), str(relayed), str(failed))
    out.print(pairs)
    circuits, relay_bytes = result.circuits, result.relay_bytes
    load = Table(title="relay load per server")
    for name in ("servers", "relaying", "circuits p50", "circuits max", "bytes p50",
                 "bytes max", "registrations p50", "registrations max"):  # fmt: skip
        load.add_column(name, justify="right")
    load.add_row(
        str(result.servers),
        str(result.relaying_servers),
        f"{percentile(circuits, 50):.0f}" if circuits else "0",
        str(max(circuits, default=0)),
        f"{percentile(relay_bytes, 50):.0f}" if relay_bytes else "0",
        str(max(relay_bytes, default=0)),
        f"{percentile(result.registrations, 50):.0f}" if result.registrations else "0",
        str(max(result.registrations, default=0)),
    )
    out.print(load)
    out.print(f"NAT kinds: {result.kinds}; joined {result.joined}")
    out.print(f"outcomes: {dict(result.outcomes)}")
    out.print(f"digest {result.digest}")
    if args.json is not None:
        row["by_pair"] = {p: dict(c) for p, c in result.by_pair.items()}
        row["stats"] = dict(result.stats)
        row["digest"] = result.digest
        args.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
