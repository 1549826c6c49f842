"""The issue-16 grid at scale: every behaviour on one formed network, one child per behaviour.

    python benchmarks/adversarial_grid.py --nodes 10000 --k 20 --alpha 3 --out DIR
    python benchmarks/adversarial_grid.py --nodes 10000 --k 16 --alpha 1 --out DIR

``nautilus-kad sim-adversarial`` measures its behaviours one after another on one network, so
a grid of five behaviours, five shares and four d costs one join but runs on one core, and a
behaviour measured late runs on a network the earlier ones have worked on. This script joins
the network once (formation does not depend on d or on the behaviour: the nodes that turn
hostile behave honestly while the network forms), then ``fork``s one child per behaviour. Each
child starts from the same formed network, in the same state a fresh ``sim-adversarial
--behaviour B`` run reaches after its join (same seed, same random state), and the children
run in parallel. Cells run in priority order (20 % and 30 % at d = 1 and 4 first, the issue's
target cells, then the rest of 20 % and 30 %, then 10 %, 40 %, 50 %); every finished cell is
appended at once to ``DIR/BEHAVIOUR.jsonl`` with the CPU seconds it took, so a run stopped
early still leaves every cell it measured. A cell whose operations do not all end within 600
virtual seconds is written as an error line (with the unfinished operations) and the child
goes on with the next cell.

``sybil`` levels are Sybils per key (``--sybil-levels``), placed cumulatively as in
``sim-adversarial``. ``--render DIR`` prints the cells measured so far as Markdown tables (one
per behaviour, rows in level and d order). Benchmarks report; they never assert.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from nautilus_kad.sim.adversarial.scenario import (
    SYBIL,
    AdversarialSpec,
    Cell,
    _Runner,
)
from nautilus_kad.sim.command import peak_rss_mib
from nautilus_kad.sim.scenario import collector_paused
from nautilus_kad.sim.simulation import default_sim_config

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5)
PATHS = (1, 2, 4, 8)


def cell_order(levels: tuple[float, ...], paths: tuple[int, ...]) -> list[tuple[float, int]]:
    """The issue's target cells first (20 % and 30 % at d = 1 and 4), then the rest of 20 % and
    30 %, then the other levels in ascending order."""
    first = [(lv, d) for lv in (0.2, 0.3) if lv in levels for d in (1, 4) if d in paths]
    second = [(lv, d) for lv in (0.2, 0.3) if lv in levels for d in paths if d not in (1, 4)]
    rest = [(lv, d) for lv in levels if lv not in (0.2, 0.3) for d in paths]
    return first + second + rest


def cell_json(cell: Cell, cpu: float, wall: float) -> dict[str, Any]:
    return {
        "behaviour": cell.behaviour,
        "level": cell.level,
        "paths": cell.paths,
        "lookup_success": cell.lookup_rate,
        "lookup_success_strict": cell.lookup_strict_rate,
        "get_success": cell.get_rate,
        "get_success_strict": cell.get_strict_rate,
        "lookup_messages": cell.lookup_messages,
        "get_messages": cell.get_messages,
        "lookup_hops_p50": cell.lookup_hops,
        "lookup_latency_p50": cell.lookup_latency,
        "malicious": cell.malicious,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def run_child(runner: _Runner, behaviour: str, out: Path, sybil_levels: tuple[int, ...]) -> None:
    """One behaviour's cells on the formed network, each line written as soon as it ends."""
    path = out / f"{behaviour}.jsonl"
    order = list(runner.sim.joined)
    runner.rng.shuffle(order)  # exactly what run() does after the join

    def emit(line: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    if behaviour == SYBIL:
        runner.spec = dataclasses.replace(
            runner.spec, behaviours=(SYBIL,), levels=tuple(float(s) for s in sybil_levels)
        )
        tick, wall = time.process_time(), time.monotonic()
        real_cell = runner.cell

        def timed_cell(*args: Any, **kwargs: Any) -> Cell:
            nonlocal tick, wall
            cell = real_cell(*args, **kwargs)
            emit(cell_json(cell, time.process_time() - tick, time.monotonic() - wall))
            tick, wall = time.process_time(), time.monotonic()
            return cell

        runner.cell = timed_cell  # type: ignore[method-assign]
        runner.run_sybils()
    else:
        current: float | None = None
        for level, paths in cell_order(runner.spec.levels, runner.spec.paths):
            if level != current:
                runner.clear_hostile()
                runner.set_hostile(order[: round(level * len(order))], behaviour)
                current = level
            tick, wall = time.process_time(), time.monotonic()
            try:
                cell = runner.cell(behaviour, level, paths)
            except RuntimeError as exc:
                emit(
                    {
                        "behaviour": behaviour,
                        "level": level,
                        "paths": paths,
                        "error": str(exc),
                        "cpu_seconds": time.process_time() - tick,
                    }
                )
                continue
            emit(cell_json(cell, time.process_time() - tick, time.monotonic() - wall))
    emit({"done": True, "digest": runner.sim.digest(), "peak_rss_mib": peak_rss_mib()})


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two measurements of one cell with the same results (CPU and wall times aside)."""
    skip = {"cpu_seconds", "wall_seconds"}
    return {k: v for k, v in a.items() if k not in skip} == {
        k: v for k, v in b.items() if k not in skip
    }


def render(out: Path) -> str:
    """Markdown tables of the cells in ``out`` (errors as rows of their own)."""
    head = json.loads((out / "grid.log").read_text(encoding="utf-8").splitlines()[0])
    lines = [
        f"{head['nodes']} nodes, k = {head['k']}, alpha = {head['alpha']}, seed {head['seed']}, "
        f"{head['lookups_per_cell']} lookups and as many gets per row; join "
        f"{head['join_cpu_seconds']:.0f} s CPU"
    ]
    for path in sorted(out.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        # A cell measured again in a later run is shown once, from its first run; the repeats
        # are listed under the table (a cell also depends on what the cells before it taught
        # the tables, so a repeat may differ).
        first: dict[tuple[float, int], dict[str, Any]] = {}
        repeats: list[dict[str, Any]] = []
        for r in rows:
            if "level" in r:
                (repeats if (r["level"], r["paths"]) in first else []).append(r)
                first.setdefault((r["level"], r["paths"]), r)
        cells = sorted(first.values(), key=lambda r: (r["level"], r["paths"]))
        if not cells:
            continue
        behaviour = cells[0]["behaviour"]
        sybil = behaviour == SYBIL
        title = f"sybil (answering as {head['sybil_behaviour']})" if sybil else behaviour
        lines += ["", f"`{title}`:", ""]
        lines.append(
            f"| {'Sybils per key' if sybil else 'hostile'} | d | lookups | strict | gets | strict "
            "| msgs / lookup | msgs / get | lookup latency p50 | CPU |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in cells:
            level = f"{r['level']:g}" if sybil else f"{100 * r['level']:g} %"
            if "error" in r:
                lines.append(f"| {level} | {r['paths']} | {r['error']} |||||||| ")
                continue
            lines.append(
                f"| {level} | {r['paths']} | {_pct(r['lookup_success'])} "
                f"| {_pct(r['lookup_success_strict'])} | {_pct(r['get_success'])} "
                f"| {_pct(r['get_success_strict'])} | {r['lookup_messages']:.0f} "
                f"| {r['get_messages']:.0f} | {1000 * r['lookup_latency_p50']:.0f} ms "
                f"| {r['cpu_seconds']:.0f} s |"
            )
        if repeats:
            again = "; ".join(
                f"{100 * r['level']:g} %, d = {r['paths']}: "
                + (
                    r["error"]
                    if "error" in r
                    else f"{_pct(r['lookup_success'])} / {_pct(r['get_success'])}"
                    + (" (identical)" if _same(r, first[(r["level"], r["paths"])]) else "")
                )
                for r in repeats
            )
            lines += ["", f"Measured again in a later run (lookups / gets): {again}."]
        done = [r for r in rows if r.get("done")]
        if done:
            lines += ["", f"(digest `{done[0]['digest'][:16]}…`)"]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        print(render(Path(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--alpha", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--behaviours", default="misroute,scatter,forge,silent,sybil", help="comma-separated"
    )
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--paths", default=",".join(map(str, PATHS)))
    parser.add_argument("--sybil-levels", default="10,20,40")
    parser.add_argument("--sybil-behaviour", default="scatter-forge")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    behaviours = tuple(b for b in args.behaviours.split(",") if b)
    levels = tuple(float(v) for v in args.levels.split(","))
    paths = tuple(int(v) for v in args.paths.split(","))
    sybil_levels = tuple(int(v) for v in args.sybil_levels.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    spec = AdversarialSpec(
        nodes=args.nodes,
        behaviours=tuple(b for b in behaviours if b != SYBIL) or ("misroute",),
        levels=levels,
        paths=paths,
        lookups=args.lookups,
        seed=args.seed,
        sybil_behaviour=args.sybil_behaviour,
        config=default_sim_config().with_changes(k=args.k, alpha=args.alpha),
    )
    log = args.out / "grid.log"
    with collector_paused():
        runner = _Runner(spec, lambda line: print(line, flush=True))
        tick, wall = time.process_time(), time.monotonic()
        runner.join()
        join = {
            "nodes": args.nodes,
            "joined": len(runner.sim.joined),
            "k": args.k,
            "alpha": args.alpha,
            "seed": args.seed,
            "lookups_per_cell": args.lookups,
            "sybil_behaviour": args.sybil_behaviour,
            "join_cpu_seconds": time.process_time() - tick,
            "join_wall_seconds": time.monotonic() - wall,
        }
        log.write_text(json.dumps(join) + "\n", encoding="utf-8")
        print(json.dumps(join), flush=True)
        children: dict[int, str] = {}
        for behaviour in behaviours:
            pid = os.fork()
            if pid == 0:  # the child: its own copy of the formed network
                code = 0
                try:
                    run_child(runner, behaviour, args.out, sybil_levels)
                except BaseException as exc:  # report and leave without running the parent's code
                    print(f"{behaviour}: {exc!r}", file=sys.stderr, flush=True)
                    code = 1
                finally:
                    sys.stdout.flush()
                    os._exit(code)
            children[pid] = behaviour
        while children:
            pid, status = os.wait()
            print(f"{children.pop(pid)} ended, status {status}", flush=True)


if __name__ == "__main__":
    main()
