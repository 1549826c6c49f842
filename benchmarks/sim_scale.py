"""How far the simulator scales: N nodes join, then run L lookups (DESIGN.md §9).

    python benchmarks/sim_scale.py                          # 10 000 nodes, 10 000 lookups
    python benchmarks/sim_scale.py --nodes 1000 --nodes 10000 --nodes 100000
    python benchmarks/sim_scale.py --join-refresh           # the daemon's (paper) join
    python benchmarks/sim_scale.py --project 100000         # estimate before running

Each size runs in a fresh child process, so its peak RSS is its own. Prints wall time (join and
lookup phases) and the process's CPU time (the two differ when other work shares the cores),
peak RSS, lookups per second, datagrams and the wall time per datagram, hops p50/p90/p99 and
the exact-k-closest rate. It also measures what real Ed25519 would add per datagram (the
simulator's default tag is a cheap keyed hash, not a security mechanism).

Benchmarks report; they never assert. ``--json PATH`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich.console import Console

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.identity import Identity
from nautilus_kad.sim import ScenarioSpec, SimAuthenticator, SimKeyring, run_scenario, summarize
from nautilus_kad.sim.command import peak_rss_mib
from nautilus_kad.sim.simulation import default_sim_config


def run_one(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """One size, in this process."""
    config: KadConfig = default_sim_config().with_changes(join_refresh=args.join_refresh)
    spec = ScenarioSpec(
        nodes=nodes,
        lookups=args.lookups,
        seed=args.seed,
        real_crypto=args.real_crypto,
        config=config,
    )
    last = [0.0]

    def progress(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5 or done == total:
            last[0] = now
            print(f"  {nodes} nodes: {phase} {done}/{total}", file=sys.stderr, flush=True)

    cpu = time.process_time()
    result = run_scenario(spec, progress)
    cpu = time.process_time() - cpu
    rows = {(s.phase, s.kind): s for s in summarize(result.records)}
    lookups = rows.get(("workload", "lookup"))
    joins = rows.get(("join", "join"))
    lookup_wall = result.phase_wall.get("workload", 0.0)
    return {
        "nodes": nodes,
        "lookups": args.lookups,
        "join_refresh": args.join_refresh,
        "real_crypto": args.real_crypto,
        "wall_s": result.wall_seconds,
        "cpu_s": cpu,
        "join_wall_s": result.phase_wall.get("join", 0.0),
        "lookup_wall_s": lookup_wall,
        "peak_rss_mib": peak_rss_mib(),
        "lookups_per_s": args.lookups / lookup_wall if lookup_wall else 0.0,
        "datagrams": result.network.sent,
        "us_per_datagram": 1e6 * result.wall_seconds / max(1, result.network.sent),
        "join_success": joins.success_rate if joins else None,
        "join_messages_p50": joins.messages.p50 if joins else None,
        "hops": [lookups.hops.p50, lookups.hops.p90, lookups.hops.p99] if lookups else None,
        "messages": [lookups.messages.p50, lookups.messages.p90, lookups.messages.p99]
        if lookups
        else None,
        "latency_ms": [1000 * x for x in (lookups.latency.p50, lookups.latency.p99)]
        if lookups
        else None,
        "success": lookups.success_rate if lookups else None,
        "exact": lookups.exact_rate if lookups else None,
        "digest": result.digest,
    }


def crypto_cost(samples: int = 2000) -> dict[str, float]:
    """Microseconds per datagram to tag and to check it: Ed25519 versus the simulator's hash."""
    rng = random.Random(1)
    payload = rng.randbytes(300)
    alice = Identity.generate(rng)
    out: dict[str, float] = {}
    keyring = SimKeyring(rng.randbytes(32))
    for name, auth in (
        ("ed25519", Authenticator(alice)),
        ("sim", SimAuthenticator(alice, keyring)),
    ):
        tag = auth.sign(payload)
        t = time.perf_counter()
        for _ in range(samples):
            auth.sign(payload)
        out[f"{name}_sign_us"] = 1e6 * (time.perf_counter() - t) / samples
        verifier = (
            Authenticator(Identity.generate(rng))
            if name == "ed25519"
            else SimAuthenticator(Identity.generate(rng), keyring)
        )
        t = time.perf_counter()
        for _ in range(samples):
            verifier.verify(alice.public_key, payload, tag)
        out[f"{name}_verify_us"] = 1e6 * (time.perf_counter() - t) / samples
    return out


def child(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """Run one size in a fresh interpreter (its own peak RSS)."""
    cmd = [sys.executable, __file__, "--child", str(nodes), "--lookups", str(args.lookups)]
    cmd += ["--seed", str(args.seed)]
    if args.join_refresh:
        cmd.append("--join-refresh")
    if args.real_crypto:
        cmd.append("--real-crypto")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "src"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, list):
        return "/".join(_f(v, "{:.0f}") for v in x)
    return fmt.format(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, action="append", help="repeatable")
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--join-refresh", action="store_true")
    parser.add_argument("--real-crypto", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args, args.child)))
        return

    console = Console()
    sizes = args.nodes or [10_000]
    crypto = crypto_cost()
    rows = []
    for nodes in sizes:
        console.print(f"running {nodes} nodes, {args.lookups} lookups …", style="dim")
        rows.append(child(args, nodes))
        r = rows[-1]
        console.print(
            f"  done: {r['wall_s']:.1f}s wall, {r['peak_rss_mib']:.0f} MiB peak", style="dim"
        )

    title = (
        f"simulator scale (seed {args.seed}, "
        f"{'paper join' if args.join_refresh else 'own-id-lookup join'}, "
        f"{'Ed25519' if args.real_crypto else 'sim tag'})"
    )
    header = (
        "nodes", "lookups", "wall s", "cpu s", "join s", "lookup s", "peak RSS MiB", "lookups/s",
        "datagrams", "µs/dgram", "hops p50/90/99", "msgs p50/90/99", "exact k", "success",
    )  # fmt: skip
    lines = [header]
    for r in rows:
        lines.append(
            (
                str(r["nodes"]),
                str(r["lookups"]),
                _f(r["wall_s"]),
                _f(r["cpu_s"]),
                _f(r["join_wall_s"]),
                _f(r["lookup_wall_s"]),
                _f(r["peak_rss_mib"], "{:.0f}"),
                _f(r["lookups_per_s"], "{:.0f}"),
                str(r["datagrams"]),
                _f(r["us_per_datagram"]),
                _f(r["hops"]),
                _f(r["messages"]),
                _f(None if r["exact"] is None else 100 * r["exact"], "{:.2f}%"),
                _f(None if r["success"] is None else 100 * r["success"], "{:.2f}%"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    console.print(title, markup=False, highlight=False)
    for n, line in enumerate(lines):
        text = "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        if n == 0:
            console.print("  ".join("-" * w for w in widths), highlight=False, soft_wrap=True)
    per_dgram = crypto["ed25519_sign_us"] + crypto["ed25519_verify_us"]
    sim_dgram = crypto["sim_sign_us"] + crypto["sim_verify_us"]
    console.print(
        f"authentication per datagram: Ed25519 sign {crypto['ed25519_sign_us']:.1f} µs + "
        f"verify {crypto['ed25519_verify_us']:.1f} µs; sim tag {sim_dgram:.1f} µs"
    )
    if not args.real_crypto:
        for r in rows:
            extra = r["datagrams"] * (per_dgram - sim_dgram) / 1e6
            console.print(
                f"  {r['nodes']} nodes with real Ed25519: about {r['wall_s'] + extra:.0f}s "
                f"(+{extra:.0f}s for {r['datagrams']} datagrams)"
            )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "crypto": crypto}, indent=2) + "\n")


if __name__ == "__main__":
    main()
