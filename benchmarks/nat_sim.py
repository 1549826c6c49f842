"""The NAT scenario (issue 11 point 6): a network where most nodes sit behind NATs.

    python -m benchmarks.nat_sim                         # 10 000 nodes, 90% behind NATs
    python -m benchmarks.nat_sim --nodes 2000 --lookups 500 --puts 100
    python -m benchmarks.nat_sim --policy off            # one policy only

For each policy (``off``: NATed nodes claim to serve, as before reachability checks;
``oracle``: those that cannot be reached run as clients; ``probe``: every node but a few
bootstrap servers runs in ``auto`` and measures its reachability), prints lookup and get success,
lookup latency, request timeouts per operation and the polluting contacts found in the
routing tables of reachable nodes. Benchmarks report; they never assert. ``--json PATH``
also writes the rows.
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
from nautilus_kad.sim.natscenario import POLICIES, NatScenarioSpec, run_nat_scenario
from nautilus_kad.sim.simulation import default_sim_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--natted", type=float, default=0.9)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", choices=POLICIES, action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rows = []
    last = [0.0]
    for policy in args.policy or POLICIES:
        spec = NatScenarioSpec(
            nodes=args.nodes,
            natted=args.natted,
            lookups=args.lookups,
            puts=args.puts,
            seed=args.seed,
            policy=policy,
            # The simulator numbers hosts densely (10.0.0.1, 10.0.0.2, ...: 254 to a /24),
            # so observers are counted per IP rather than per /24 here.
            config=default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32)),
        )

        def progress(phase: str, done: int, total: int, policy: str = policy) -> None:
            now = time.perf_counter()
            if now - last[0] > 5 or done == total:
                last[0] = now
                console.print(f"  {policy}: {phase} {done}/{total}")

        result = run_nat_scenario(spec, progress)
        row = result.row()
        row["kinds"] = result.kinds
        row["digest"] = result.digest
        rows.append(row)
    table = Table(title=f"{args.nodes} nodes, {args.natted:.0%} behind NATs (seed {args.seed})")
    for name in ("policy", "lookup success", "get success", "put success", "lookup p50 s",
                 "lookup p99 s", "timeouts/op", "polluting contacts", "tables polluted",
                 "servers", "reachable clients", "hidden servers", "wall s", "cpu s"):  # fmt: skip
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(
            str(row["policy"]),
            f"{row['lookup success']:.2%}",
            f"{row['get success']:.2%}",
            f"{row['put success']:.2%}",
            f"{row['lookup p50 s']:.3f}",
            f"{row['lookup p99 s']:.3f}",
            f"{row['timeouts/op']:.2f}",
            str(row["polluting contacts"]),
            f"{row['tables polluted']:.1%}",
            str(row["servers"]),
            str(row["reachable clients"]),
            str(row["hidden servers"]),
            f"{row['wall s']:.0f}",
            f"{row['cpu s']:.0f}",
        )
    out = Console(width=160)
    out.print(table)
    if rows:
        out.print(f"NAT kinds: {rows[0]['kinds']}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
