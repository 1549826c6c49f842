"""nautilus-kad against the Python peer most users pick, measured side by side in one run.

    python -m benchmarks.peer             # N = 200 and 1000, PING and FIND_NODE (~10 min)
    python -m benchmarks.peer --quick     # N = 50 and 200, shorter phases (~2 min)

The peer is bmuller/kademlia 2.2.3 from PyPI. It authenticates nothing; nautilus-kad signs or
seals every datagram. The peer is installed in a virtual environment of its own (created on
first use under the user's cache directory, ``--venv`` to choose, reused afterwards), so its
dependencies never meet ours. Every scenario runs in a fresh worker process
(:mod:`benchmarks.peer_worker`), for each library through its public API:

* a network of N nodes in one process, each joining through 3 random earlier nodes: join
  p50 and datagrams per join, memory per node (RSS growth / N, after joining and after the
  puts and gets), sequential and concurrent puts and gets from random nodes, and gets right
  after 30% and then 50% of the nodes were stopped abruptly;
* PING and FIND_NODE answered per second by one server (its table filled by real nodes),
  with the client in another process using the library's own client API.

One table: both figures and their ratio (nautilus-kad ÷ peer) per row, with which side is
better. Timings depend on the machine's load, which is printed beside them; the ratios of one
run are what count. ``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from nautilus_kad.aio.runner import uvloop_available

PEER = "kademlia==2.2.3"
WORKER = Path(__file__).resolve().parent / "peer_worker.py"
LIBS = ("kademlia", "nautilus")
WORKER_TIMEOUT = 1800.0


def default_venv() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "nautilus-kad" / "peer-kademlia-2.2.3"


def ensure_peer_venv(venv: Path, log: Console) -> Path:
    """The peer's interpreter: a virtual environment with exactly ``kademlia==2.2.3``."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('kademlia'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip() == "2.2.3":
            return python
    log.log(f"creating the peer's virtual environment in {venv} ({PEER} from PyPI)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", PEER],
        check=True,
    )
    found = subprocess.run(check, capture_output=True, text=True, check=True)
    if found.stdout.strip() != "2.2.3":
        raise RuntimeError(f"the peer's venv has kademlia {found.stdout.strip()!r}")
    return python


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    puts: int
    gets: int
    window: int
    kill_gets: int
    kill_window: int
    fillers: int
    duration: float
    rpc_window: int
    loop: str
    peer_loop: str
    seed: int


def load() -> str:
    """The 1-minute load average (the machine is shared: numbers move with it)."""
    return f"{os.getloadavg()[0]:.2f}"


class Runner:
    def __init__(self, settings: Settings, pythons: dict[str, str], log: Console) -> None:
        self.settings = settings
        self.pythons = pythons
        self.log = log

    def _command(self, lib: str, *args: str) -> list[str]:
        loop = self.settings.loop if lib == "nautilus" else self.settings.peer_loop
        return [
            self.pythons[lib],
            str(WORKER),
            "--lib",
            lib,
            "--loop",
            loop,
            "--seed",
            str(self.settings.seed),
            *args,
        ]

    @staticmethod
    def _result(stdout: str, what: str) -> dict[str, Any]:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"{what}: the worker printed no result")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def network(self, lib: str, nodes: int) -> dict[str, Any]:
        s = self.settings
        what = f"{lib}: network of {nodes}"
        self.log.log(f"{what} (load {load()})")
        args = ["--scenario", "network", "--nodes", str(nodes), "--puts", str(s.puts)]
        args += ["--gets", str(s.gets), "--window", str(s.window)]
        args += ["--kill-gets", str(s.kill_gets), "--kill-window", str(s.kill_window)]
        done = subprocess.run(
            self._command(lib, *args),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
        result = self._result(done.stdout, what)
        result["load"] = load()
        return result

    def rpc(self, lib: str, kind: str) -> dict[str, Any]:
        """One server process, one client process of the same library."""
        s = self.settings
        what = f"{lib}: {kind} answered per second"
        self.log.log(f"{what} (load {load()})")
        server = subprocess.Popen(
            self._command(lib, "--scenario", "server", "--fillers", str(s.fillers)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdin is not None
            ready = server.stdout.readline().split()
            if len(ready) != 4 or ready[0] != "READY":
                raise RuntimeError(f"{what}: the server did not start: {ready}")
            host, port, table = ready[1], ready[2], int(ready[3])
            args = ["--scenario", "client", "--server-host", host, "--server-port", port]
            args += ["--kind", kind, "--duration", str(s.duration)]
            args += ["--window", str(s.rpc_window)]
            done = subprocess.run(
                self._command(lib, *args),
                capture_output=True,
                text=True,
                timeout=120 + s.duration,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{what}: the client failed:\n{done.stderr[-3000:]}")
            result = self._result(done.stdout, what)
            out, err = server.communicate("", timeout=60)
            if server.returncode != 0:
                raise RuntimeError(f"{what}: the server failed:\n{err[-3000:]}")
            served = self._result(out, what)
            result["server_cpu_per_request_us"] = (
                served["server_cpu_s"] / result["answered"] * 1e6
                if result["answered"]
                else float("nan")
            )
            result["client_cpu_per_request_us"] = (
                result["client_cpu_s"] / result["answered"] * 1e6
                if result["answered"]
                else float("nan")
            )
            result["table"] = table
            result["load"] = load()
            return result
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(10)


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    path: tuple[str, ...]
    unit: str
    higher_is_better: bool
    digits: int = 1


def _network_rows(nodes: int) -> list[Row]:
    n = f"N = {nodes}"
    rows = [
        Row(f"join p50, {n} (3 random earlier nodes)", ("join_p50_ms",), " ms", False),
        Row(f"  datagrams sent per join, {n}", ("datagrams_per_join",), "", False, 0),
        Row(f"  mean routing-table size, {n}", ("mean_table",), "", True, 0),
        Row(f"memory per node after joining, {n}", ("rss_per_node_joined",), " KiB", False, 0),
        Row(
            f"memory per node after puts and gets, {n}", ("rss_per_node_worked",), " KiB", False, 0
        ),
    ]
    for key, label in (
        ("put_seq", "put p50, sequential"),
        ("get_seq", "get p50, sequential"),
        ("put_conc", "put p50, concurrent"),
        ("get_conc", "get p50, concurrent"),
    ):
        rows.append(Row(f"{label}, {n}", ("phases", key, "p50_ms"), " ms", False, 2))
        if key.endswith("conc"):
            rows.append(
                Row(
                    f"  {key[:3]}s per second, concurrent",
                    ("phases", key, "per_second"),
                    "/s",
                    True,
                    0,
                )
            )
        rows.append(Row("  success", ("phases", key, "success"), " %", True, 1))
    for share in (30, 50):
        key = f"get_after_{share}"
        rows.append(
            Row(
                f"get p50 right after {share}% killed, {n}",
                ("phases", key, "p50_ms"),
                " ms",
                False,
                1,
            )
        )
        rows.append(Row("  success", ("phases", key, "success"), " %", True, 1))
    return rows


def _value(result: dict[str, Any] | None, row: Row) -> float:
    node: Any = result
    for part in row.path:
        if not isinstance(node, dict) or part not in node:
            return float("nan")
        node = node[part]
    value = float(node)
    if row.unit == " KiB":
        value /= 1024
    elif row.unit == " %":
        value *= 100
    return value


def _fmt(value: float, row: Row) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.{row.digits}f}{row.unit}"


def _ratio(ours: float, peer: float, row: Row) -> str:
    if math.isnan(ours) or math.isnan(peer) or peer == 0 or ours == 0:
        return "—"
    ratio = ours / peer
    if row.unit == " %":
        return f"{ratio:.2f}x"
    if math.isclose(ratio, 1.0, rel_tol=0.02):
        return f"{ratio:.2f}x (even)"
    better = ratio > 1 if row.higher_is_better else ratio < 1
    factor = ratio if ratio >= 1 else 1 / ratio
    if row.higher_is_better:
        word = "more" if ratio > 1 else "fewer"
    else:
        word = "slower" if ratio > 1 else "faster"
        if row.unit in {" KiB", ""}:
            word = "more" if ratio > 1 else "less"
    colour = "green" if better else "red"
    return f"{ratio:.2f}x [{colour}]({factor:.1f}x {word})[/{colour}]"


def build_table(settings: Settings, results: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"nautilus-kad (authenticated) vs {PEER} (no authentication) — loopback, "
            f"nautilus on {settings.loop}, peer on {settings.peer_loop}, "
            f"{os.cpu_count()} CPUs"
        )
    )
    table.add_column("figure")
    table.add_column("kademlia 2.2.3", justify="right")
    table.add_column("nautilus-kad", justify="right")
    table.add_column("ratio (ours ÷ peer)", justify="right")
    table.add_column("load", justify="right")
    for nodes in settings.sizes:
        pair = results.get(f"network-{nodes}", {})
        peer, ours = pair.get("kademlia"), pair.get("nautilus")
        loads = "/".join(str(r.get("load", "")) for r in (peer, ours) if r)
        for i, row in enumerate(_network_rows(nodes)):
            a, b = _value(peer, row), _value(ours, row)
            table.add_row(
                row.label, _fmt(a, row), _fmt(b, row), _ratio(b, a, row), loads if i == 0 else ""
            )
        table.add_section()
    for kind in ("PING", "FIND_NODE"):
        pair = results.get(f"rpc-{kind}", {})
        peer, ours = pair.get("kademlia"), pair.get("nautilus")
        loads = "/".join(str(r.get("load", "")) for r in (peer, ours) if r)
        row = Row(
            f"{kind} answered per second (client in another process)",
            ("per_second",),
            "/s",
            True,
            0,
        )
        a, b = _value(peer, row), _value(ours, row)
        table.add_row(row.label, _fmt(a, row), _fmt(b, row), _ratio(b, a, row), loads)
        for side in ("server", "client"):  # on two idle cores the slower side sets the rate
            cpu = Row(f"  {side} CPU per request", (f"{side}_cpu_per_request_us",), " µs", False, 0)
            a, b = _value(peer, cpu), _value(ours, cpu)
            table.add_row(cpu.label, _fmt(a, cpu), _fmt(b, cpu), _ratio(b, a, cpu), "")
    return table


# --- command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="benchmarks.peer", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 50 and 200, shorter phases")
    parser.add_argument("--sizes", help="network sizes, comma-separated (200,1000)")
    parser.add_argument("--venv", type=Path, default=None, help="the peer's virtual environment")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="uvloop" if uvloop_available() else "asyncio",
        help="nautilus-kad's event loop (uvloop when installed: what its daemon runs)",
    )
    parser.add_argument(
        "--peer-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the peer's event loop (asyncio: the only one it documents)",
    )
    parser.add_argument("--only", choices=("network", "rpc"), help="run one half")
    parser.add_argument("--puts", type=int, help="puts per phase (100; quick 30)")
    parser.add_argument("--gets", type=int, help="gets per phase (300; quick 100)")
    parser.add_argument("--kill-gets", type=int, help="gets after each kill (60; quick 20)")
    parser.add_argument("--fillers", type=int, help="nodes in the RPC server's table (40)")
    parser.add_argument("--duration", type=float, help="seconds per RPC kind (5; quick 2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    sizes = (50, 200) if quick else (200, 1000)
    if args.sizes:
        sizes = tuple(int(part) for part in args.sizes.split(","))

    def pick(given: float | None, fast: float, full: float) -> float:
        return given if given is not None else (fast if quick else full)

    settings = Settings(
        sizes=sizes,
        puts=int(pick(args.puts, 30, 100)),
        gets=int(pick(args.gets, 100, 300)),
        window=20,
        kill_gets=int(pick(args.kill_gets, 20, 60)),
        kill_window=20,
        fillers=int(pick(args.fillers, 20, 40)),
        duration=pick(args.duration, 2.0, 5.0),
        rpc_window=32,
        loop=args.loop,
        peer_loop=args.peer_loop,
        seed=args.seed,
    )
    return settings, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    log = Console(stderr=True)
    out = Console(width=max(Console().width, 150))
    started = time.perf_counter()
    pythons = {
        "kademlia": str(ensure_peer_venv(args.venv or default_venv(), log)),
        "nautilus": sys.executable,
    }
    runner = Runner(settings, pythons, log)
    results: dict[str, Any] = {"load_start": load()}
    if args.only in (None, "network"):
        for nodes in settings.sizes:
            results[f"network-{nodes}"] = {lib: runner.network(lib, nodes) for lib in LIBS}
    if args.only in (None, "rpc"):
        for kind in ("PING", "FIND_NODE"):
            results[f"rpc-{kind}"] = {lib: runner.rpc(lib, kind) for lib in LIBS}
    results["load_end"] = load()
    out.print(build_table(settings, results))
    out.print(
        f"load average {results['load_start']} at the start, {results['load_end']} at the end "
        f"(2 cores); total {time.perf_counter() - started:.0f} s"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": settings.__dict__, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
