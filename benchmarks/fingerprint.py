"""Behaviour fingerprint of the engine: proof that a structural refactor changed nothing.

    python -m benchmarks.fingerprint                 # the digests of the working tree
    python -m benchmarks.fingerprint --against main  # ... and of REV, compared
    python -m benchmarks.fingerprint --quick         # smaller scenarios (what the test runs)

Three seeded simulator scenarios that together reach most of the engine:

* ``churn``: nodes come and go (half of them leave cleanly), 2% loss, lookups, puts and gets;
* ``disjoint``: the paper join (``join_refresh``), lookups and gets on disjoint paths, k = 8;
* ``durability``: two virtual hours with short replication intervals: open records, signed
  records published with ``republish=True``, compare-and-swap updates (one refused), quorum
  gets of signed records, a mass crash, arrivals, clean leaves and a ping.

Each scenario gives three SHA-256 digests:

* ``net``: the simulator's trace digest: every datagram (time, ends, fate, full bytes), every
  finished operation and the scheduler's event count (so every ``get_timer()`` wake-up);
* ``events``: every event every engine emitted, in order, with the virtual time;
* ``state``: every engine's end state, read through its public surface only (stats, store,
  routing table, next timer, pending requests, replication backlog, sessions, published
  records), so the same script runs unchanged on the code before and after a refactor.

A structural commit must keep all nine digests equal; ``--against REV`` checks REV out in a
temporary git worktree, runs this same script on REV's sources in a child process and prints
both side by side (exit status 1 when any differs). Benchmarks report; this one also compares.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import nautilus_kad
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import Event
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.records import RecordKind, make_signed
from nautilus_kad.sim import ScenarioSpec, run_scenario
from nautilus_kad.sim.scenario import ChurnModel, collector_paused
from nautilus_kad.sim.simulation import Operation, SimNode, Simulation, default_sim_config

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("net", "events", "state")


# --- recording what every engine does --------------------------------------------------------


class Recorder:
    """Hashes every event of every engine and keeps every engine built while it is active.

    It wraps ``KadEngine.__init__`` and ``KadEngine.next_event`` on the class (both public),
    so the engine code itself is not touched and any version of it can be fingerprinted."""

    def __init__(self) -> None:
        self.engines: list[KadEngine] = []
        self.events = hashlib.sha256()
        self.count = 0
        self.sims: list[Simulation] = []

    def clock(self) -> float:
        """The virtual time of the simulation being recorded."""
        return self.sims[-1].now if self.sims else 0.0

    @contextmanager
    def active(self) -> Iterator[Recorder]:
        cls = KadEngine
        init, next_event = cls.__init__, cls.next_event
        sim_init = Simulation.__init__
        recorder = self

        def recording_sim_init(sim: Simulation, *args: Any, **kwargs: Any) -> None:
            sim_init(sim, *args, **kwargs)
            recorder.sims.append(sim)

        def recording_init(engine: KadEngine, *args: Any, **kwargs: Any) -> None:
            init(engine, *args, **kwargs)
            recorder.engines.append(engine)

        def recording_next_event(engine: KadEngine) -> Event | None:
            event = next_event(engine)
            if event is not None:
                recorder.count += 1
                recorder.events.update(
                    f"{recorder.clock()!r}|{engine.node_id.hex()}|{event!r}\n".encode()
                )
            return event

        cls.__init__ = recording_init  # type: ignore[method-assign,assignment]
        cls.next_event = recording_next_event  # type: ignore[method-assign,assignment]
        Simulation.__init__ = recording_sim_init  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            cls.__init__ = init  # type: ignore[method-assign]
            cls.next_event = next_event  # type: ignore[method-assign]
            Simulation.__init__ = sim_init  # type: ignore[method-assign]

    def state_digest(self, now: float) -> str:
        """Every engine's end state, in the order the engines were built."""
        digest = hashlib.sha256()
        for engine in self.engines:
            digest.update(engine_state(engine, now).encode())
        return digest.hexdigest()


def engine_state(engine: KadEngine, now: float) -> str:
    """One engine's state as text, read through public attributes only."""
    parts: list[str] = [engine.node_id.hex(), repr(sorted(engine.stats.items()))]
    store = engine.store
    for key in sorted(store.keys()):
        parts.append(repr(store.get(key, now)))
    for entry in engine.table.entries():
        parts.append(
            f"{entry.contact!r}/{entry.failures}/{entry.last_seen!r}/"
            f"{entry.rtt.timeout(0.0, 1e9)!r}"
        )
    parts.append(repr(sorted(engine.table.bucket_sizes().items())))
    parts.append(
        f"timer={engine.get_timer()!r} pending={engine.pending_requests} "
        f"backlog={engine.replication_backlog} sessions={len(engine.sessions)} "
        f"bytes={engine.stored_bytes} flags={engine.flags} "
        f"observed={engine.observed_address!r} strikes={list(engine.strikes.items())!r}"
    )
    parts.append(repr(engine.published()))
    metrics = engine.metrics(now)
    parts.append(repr(sorted(metrics.items())))
    return "\n".join(parts) + "\n\n"


# --- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """How big each scenario is (``--quick`` shrinks them for the test suite)."""

    churn_nodes: int = 200
    churn_ops: int = 200
    churn_puts: int = 20
    disjoint_nodes: int = 150
    disjoint_ops: int = 150
    durability_nodes: int = 120
    durability_records: int = 30
    durability_signed: int = 6
    durability_crash: int = 35
    durability_arrivals: int = 20
    durability_hours: float = 2.0


QUICK = Size(40, 40, 5, 40, 30, 40, 8, 3, 10, 5, 0.5)


def churn(size: Size, recorder: Recorder) -> str:
    spec = ScenarioSpec(
        nodes=size.churn_nodes,
        lookups=size.churn_ops,
        puts=size.churn_puts,
        gets_per_put=2,
        seed=11,
        loss=0.02,
        churn=ChurnModel(median_session=30.0, clean_fraction=0.5),
        duration=120.0,
        trace=True,
    )
    return run_scenario(spec).digest


def disjoint(size: Size, recorder: Recorder) -> str:
    config = replace(default_sim_config(), k=8, disjoint_paths=3, join_refresh=True)
    spec = ScenarioSpec(
        nodes=size.disjoint_nodes,
        lookups=size.disjoint_ops,
        puts=size.disjoint_ops // 10,
        gets_per_put=2,
        seed=12,
        loss=0.01,
        config=config,
        trace=True,
    )
    return run_scenario(spec).digest


def durability(size: Size, recorder: Recorder) -> str:
    config = replace(
        default_sim_config(),
        k=8,
        republish_interval=300.0,
        publisher_republish_interval=900.0,
        neighbour_check_interval=60.0,
        token_rotation=120.0,
        refresh_interval=600.0,
        repair_delay=10.0,
        signed_get_quorum=3,
    )
    sim = Simulation(13, config=config, loss=0.01, trace=True)
    with collector_paused():
        return _durability(sim, size)


def _durability(sim: Simulation, size: Size) -> str:
    start = sim.now
    rng = sim.rng
    sim.grow(size.durability_nodes)
    sim.run_for(30.0)
    ops: list[Operation] = []
    keys = [NodeId(rng.getrandbits(256)) for _ in range(size.durability_records)]
    for i, key in enumerate(keys):
        ops.append(sim.put(sim.joined.choice(rng), key, b"open-%d" % i))
    sim.wait(ops)

    # Signed records, published by the node that owns them and re-put by it.
    signed: list[tuple[SimNode, bytes]] = []
    for i in range(size.durability_signed):
        node = sim.joined.choice(rng)
        salt = rng.randbytes(8)
        record = make_signed(node.engine.identity, salt, b"signed-%d" % i, 1, 86_400)
        node.engine.put(record, sim.now, republish=True)
        node.flush()
        signed.append((node, salt))
    sim.run_for(60.0)

    def signed_gets() -> None:
        for node, salt in signed:
            reader = sim.joined.choice(rng)
            key = make_signed(node.engine.identity, salt, b"", 0, 60).key
            reader.engine.get(key, sim.now, kind=RecordKind.SIGNED)
            reader.flush()

    # Compare-and-swap: updates that expect seq 1 (accepted), then one that is refused.
    for node, salt in signed[: max(1, len(signed) // 2)]:
        if node.up:
            update = make_signed(node.engine.identity, salt, b"updated", 2, 86_400)
            node.engine.put(update, sim.now, cas=1, republish=True)
            node.flush()
    sim.run_for(30.0)
    node, salt = signed[0]
    if node.up:
        late = make_signed(node.engine.identity, salt, b"late", 3, 86_400)
        node.engine.put(late, sim.now, cas=1)
        node.flush()
    signed_gets()
    sim.run_for(600.0)

    # A mass crash, arrivals, clean leaves, a ping, reads.
    live = list(sim.nodes.values())
    for victim in rng.sample(live, min(size.durability_crash, len(live) - 5)):
        sim.crash(victim)
    sim.run_for(900.0)
    sim.grow(size.durability_arrivals, interval=1.0)
    for leaver in sim.joined.sample(rng, 5):
        sim.leave(leaver)
    sim.run_for(60.0)
    a, b = sim.joined.sample(rng, 2)
    sim.wait([sim.ping(a, b.address)])
    reads = [sim.get(sim.joined.choice(rng), key) for key in keys]
    signed_gets()
    sim.wait(reads)
    sim.run(start + size.durability_hours * 3600.0)
    return sim.digest()


SCENARIOS: dict[str, Callable[[Size, Recorder], str]] = {
    "churn": churn,
    "disjoint": disjoint,
    "durability": durability,
}


def fingerprint(size: Size, names: tuple[str, ...] = tuple(SCENARIOS)) -> dict[str, dict[str, str]]:
    """Run the scenarios and return ``{scenario: {net, events, state}}``."""
    out: dict[str, dict[str, str]] = {}
    for name in names:
        recorder = Recorder()
        with recorder.active():
            net = SCENARIOS[name](size, recorder)
        out[name] = {
            "net": net,
            "events": recorder.events.hexdigest(),
            "state": recorder.state_digest(recorder.clock()),
        }
    return out


# --- against another revision ----------------------------------------------------------------


def run_at(rev: str, quick: bool, names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """This script's fingerprint of the sources at ``rev`` (a temporary git worktree)."""
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(tree), rev],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        try:
            out = Path(tmp) / "out.json"
            env = dict(os.environ, PYTHONPATH=str(tree / "src"), PYTHONHASHSEED="0")
            args = [sys.executable, "-m", "benchmarks.fingerprint", "--json", str(out), "--at-src"]
            args += ["--only", ",".join(names)]
            if quick:
                args.append("--quick")
            subprocess.run(args, cwd=ROOT, env=env, check=True)
            data = json.loads(out.read_text())
            if not str(data["source"]).startswith(str(tree)):
                raise RuntimeError(f"the child ran {data['source']}, not the sources of {rev}")
            result: dict[str, dict[str, str]] = data["digests"]
            return result
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)],
                check=False,
                cwd=ROOT,
                capture_output=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also fingerprint REV and compare")
    parser.add_argument("--quick", action="store_true", help="small scenarios")
    parser.add_argument("--only", help="comma-separated scenarios (default: all)")
    parser.add_argument("--json", type=Path, help="write the digests to this file")
    parser.add_argument("--at-src", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = tuple(args.only.split(",")) if args.only else tuple(SCENARIOS)
    size = QUICK if args.quick else Size()
    started, cpu = time.perf_counter(), time.process_time()
    mine = fingerprint(size, names)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if args.json:
        args.json.write_text(
            json.dumps({"source": nautilus_kad.__file__, "digests": mine, "cpu": cpu}, indent=1)
        )
    if args.at_src:
        return 0
    theirs = run_at(args.against, args.quick, names) if args.against else None
    print(f"{'scenario':<11} {'digest':<7} {'this tree':<16} {args.against or '':<16}")
    same = True
    for name in names:
        for kind in KINDS:
            ours = mine[name][kind]
            line = f"{name:<11} {kind:<7} {ours[:16]}"
            if theirs is not None:
                other = theirs[name][kind]
                line += f" {other[:16]} {'same' if other == ours else 'DIFFERENT'}"
                same &= other == ours
            print(line)
    print(f"wall {wall:.1f} s, cpu {cpu:.1f} s (this tree)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
