"""NAT traversal on real Linux NATs (issue 12 point 6): the pair table.

    sudo python -m benchmarks.nat_pairs                 # every cell, 20 connects each
    sudo python -m benchmarks.nat_pairs --tries 100     # the issue's 99 % criterion
    sudo python -m benchmarks.nat_pairs --cell "PR x PR" --cell "SYM x SYM"

Builds the NAT lab (tests/natlab.py: network namespaces and nftables, root only) with three
public server nodes and, behind NATs of every kind, client nodes that echo what their
channels bring (tests/natpeer.py: a real Node per host); then for each cell makes the
connects from one host to the other and counts direct / relayed / failed ones (a channel
counts when a datagram's echo came back through it), how many channels opened within 2 s
and 3 s of the call, and the median and largest time to a channel. Cells (a cell expected
to fail gets at most 3 tries):

* every unordered pair of public, full cone (FC), address-restricted (AR), port-restricted
  (PR) and symmetric (SYM);
* two hosts behind one port-restricted NAT, with and without hairpinning;
* a port-restricted NAT whose binding timeout (4 s) is shorter than the idle time (10 s)
  before the connects, towards a node with keepalives (every 1 s: 20 s scaled by 0.05) and
  one without;
* PR x PR and SYM x PR under 20 % loss on the "internet" (every datagram crossing it).

"expect" is what RFC 4787 allows (tests/test_natlab_punch.py proves it of the lab with
plain sockets). Benchmarks report; they never assert. ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rich.console import Console
from rich.table import Table

from nautilus_kad.sim.report import percentile
from tests.natlab import lab_problem
from tests.natpairs import Cell, CellResult, World, matrix_plan, run_cell


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20, help="connects per cell")
    parser.add_argument("--cell", action="append", help="only these cells (by name)")
    parser.add_argument("--timeout", type=float, default=10.0, help="of each connect (s)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    problem = lab_problem()
    if problem is not None:
        sys.exit(f"nat_pairs: {problem}")
    console = Console(stderr=True)
    hosts, cells = matrix_plan()
    if args.cell:
        cells = [c for c in cells if c.name in args.cell]
        if not cells:
            sys.exit(
                f"nat_pairs: no such cell; cells: {', '.join(c.name for c in matrix_plan()[1])}"
            )
        wanted = {c.a for c in cells} | {c.b for c in cells}
        hosts = {name: spec for name, spec in hosts.items() if name in wanted}
    started, cpu = time.perf_counter(), time.process_time()
    results: list[CellResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nat-pairs-") as root:
            console.print(f"building the lab: {len(hosts)} hosts and 3 servers")
            with World(Path(root), hosts) as world:
                world.wait_registered()
                console.print(f"lab ready after {time.perf_counter() - started:.0f} s")
                for cell in cells:
                    tries = args.tries if cell.expect != "none" else min(args.tries, 3)
                    result = run_cell(world, cell, tries, args.timeout)
                    results.append(result)
                    console.print(f"  {cell.name}: {summary(result)}")
    finally:  # the cells done so far, also when one broke the lab
        print_table(results, args.tries)
    wall = time.perf_counter() - started
    print(f"wall {wall:.0f} s, this process's CPU {time.process_time() - cpu:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps([row(r) for r in results], indent=2))


def summary(result: CellResult) -> str:
    r = row(result)
    times = "" if r["p50 s"] is None else f", p50 {r['p50 s']:.2f} s, max {r['max s']:.2f} s"
    return f"{result.direct} direct, {result.relayed} relayed, {result.failed} failed{times}"


def row(result: CellResult) -> dict[str, object]:
    times = sorted(t for t in result.times if not math.isnan(t))
    return {
        "cell": result.cell.name,
        "expect": result.cell.expect,
        "direct": result.direct,
        "relayed": result.relayed,
        "failed": result.failed,
        "<= 2 s": sum(t <= 2.0 for t in times),
        "<= 3 s": sum(t <= 3.0 for t in times),
        "p50 s": percentile(times, 50) if times else None,
        "max s": times[-1] if times else None,
        "codes": result.codes,
    }


def print_table(results: list[CellResult], tries: int) -> None:
    table = Table(title=f"NAT pairs on the lab, {tries} connects per cell")
    for name in ("cell", "expect", "direct", "relayed", "failed", "<= 2 s", "<= 3 s", "p50 s",
                 "max s", "codes"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("cell", "codes") else "right")
    for result in results:
        r = row(result)
        table.add_row(
            str(r["cell"]),
            str(r["expect"]),
            str(r["direct"]),
            str(r["relayed"]),
            str(r["failed"]),
            str(r["<= 2 s"]),
            str(r["<= 3 s"]),
            "-" if r["p50 s"] is None else f"{r['p50 s']:.2f}",
            "-" if r["max s"] is None else f"{r['max s']:.2f}",
            ", ".join(f"{c} x{n}" for c, n in result.codes.items()),
        )
    Console(width=160).print(table)


__all__ = ["Cell", "main"]

if __name__ == "__main__":
    main()
