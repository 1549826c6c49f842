"""The NAT pair matrix on the lab (tests/natlab.py) with real ``nautilus-kad`` processes:
shared by the CI subset (tests/test_natlab_connect.py) and the full matrix
(benchmarks/nat_pairs.py).

A :class:`World` is one lab: a few public servers (``run --mode server --echo``: bootstrap,
rendezvous and relays), and the hosts the cells ask for, each running ``run --echo`` as a
client behind its NAT (public ones as servers). A :class:`Cell` names two of those hosts and
what RFC 4787 lets them do (``direct``, ``relayed``, or ``none`` for a node that cannot be
reached at all); :func:`run_cell` makes ``tries`` connects from the first to the second with
``nautilus-kad connect`` inside the first host's namespace and counts what each one got.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.natlab import NAT_KINDS, Host, NatLab

KAD = [sys.executable, "-m", "nautilus_kad"]
PORT = 7400
TIMESCALE = "0.05"
"""``--nat-timescale`` of every daemon: reachability and traversal timers 20 times faster."""
KINDS = ("public", *NAT_KINDS)
SHORT = {"public": "pub", "full-cone": "FC", "address-restricted": "AR",
         "port-restricted": "PR", "symmetric": "SYM"}  # fmt: skip


def expected_path(x: str, y: str) -> str:
    """RFC 4787: two sockets punch through unless an endpoint-dependent mapping
    (symmetric) meets a port-dependent filter (port-restricted or symmetric); then only a
    relay joins them (tests/test_natlab_punch.py proves this of the lab itself)."""
    if {x, y} in ({"symmetric", "port-restricted"}, {"symmetric"}):
        return "relayed"
    return "direct"


class Daemon:
    """``nautilus-kad run`` inside a lab host, with its data dir and its log."""

    def __init__(
        self, lab: NatLab, host: Host, root: Path, bootstrap: Sequence[Host],
        extra: Sequence[str] = (), name: str = "",
    ) -> None:  # fmt: skip
        self.lab, self.host = lab, host
        self.name = name or host.netns
        self.data_dir = root / self.name
        self.log = root / f"{self.name}.log"
        command = [*KAD, "run", "--host", host.ip, "--port", str(PORT), "--echo", *extra]
        command += ["--data-dir", str(self.data_dir), "--log-level", "info"]
        for seed in bootstrap:
            command += ["-b", f"{seed.ip}:{PORT}"]
        with self.log.open("w") as out:
            self.process = lab.spawn(host, command, stdout=out, stderr=subprocess.STDOUT)
        self.node_id = ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "daemon is ready" in text:
                found = re.search(r"node id ([0-9a-f]{64})", text)
                assert found is not None, text
                self.node_id = found.group(1)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def status(self) -> dict[str, object]:
        out = self.lab.run(self.host, [*KAD, "status", "--json", "--data-dir",
                                       str(self.data_dir)], timeout=60)  # fmt: skip
        result: dict[str, object] = json.loads(out)
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class Cell:
    """One row of the pair table: connects from ``a`` to ``b`` (host names in the world)."""

    name: str
    a: str
    b: str
    expect: str
    """``direct``, ``relayed`` or ``none`` (no channel can be had)."""
    loss: int = 0
    """Percent loss on the internet bridge while the connects run."""
    idle: float = 0.0
    """Seconds both stay idle before the connects (the binding-timeout cells)."""


@dataclass
class CellResult:
    cell: Cell
    direct: int = 0
    relayed: int = 0
    failed: int = 0
    times: list[float] = field(default_factory=list)
    """Seconds to a channel, per successful try (as the CLI printed it)."""
    codes: dict[str, int] = field(default_factory=dict)
    """Failure codes and how often."""

    @property
    def tries(self) -> int:
        return self.direct + self.relayed + self.failed


@dataclass
class Plan:
    """What a world is made of: NATed hosts by name, and the cells between them."""

    hosts: dict[str, tuple[str, dict[str, object]]]
    """name → (NAT kind or "public" / "hairpin" / "no-hairpin" pair member, options)."""
    cells: list[Cell]


def pair_cells(kinds: Sequence[str] = KINDS) -> tuple[dict[str, tuple[str, dict[str, object]]],
                                                      list[Cell]]:  # fmt: skip
    """Two hosts of each kind (each NATed one behind its own NAT) and a cell per unordered
    pair of kinds (the first host of the lower kind connects to the second of the other)."""
    hosts: dict[str, tuple[str, dict[str, object]]] = {}
    for kind in kinds:
        for i in (1, 2):
            hosts[f"{SHORT[kind]}{i}"] = (kind, {})
    cells = []
    for i, x in enumerate(kinds):
        for y in kinds[i:]:
            cells.append(Cell(f"{SHORT[x]} x {SHORT[y]}", f"{SHORT[x]}1", f"{SHORT[y]}2",
                              expected_path(x, y)))  # fmt: skip
    return hosts, cells


class World:
    """A lab with ``servers`` public server daemons and the hosts of ``hosts`` (see
    :class:`Plan`), each running a daemon. A context manager: everything is removed on
    exit, also on failure."""

    def __init__(
        self, root: Path, hosts: dict[str, tuple[str, dict[str, object]]], servers: int = 3,
        extra: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.root = root
        self.plan = hosts
        self.server_count = servers
        self.extra = list(extra)
        self.lab = NatLab()
        self.hosts: dict[str, Host] = {}
        self.daemons: dict[str, Daemon] = {}

    def __enter__(self) -> World:
        self.lab.__enter__()
        try:
            self._build()
        except BaseException:
            self.lab.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.lab.close()

    def _build(self) -> None:
        lab, root = self.lab, self.root
        root.mkdir(parents=True, exist_ok=True)
        servers = [lab.add_public() for _ in range(self.server_count)]
        self.servers: list[Daemon] = []
        for host in servers:  # each joins through all before it
            seeds = [d.host for d in self.servers]
            daemon = Daemon(lab, host, root, seeds, ["--mode", "server",
                            "--nat-timescale", TIMESCALE, *self.extra])  # fmt: skip
            daemon.wait_ready()
            self.servers.append(daemon)
        shared: dict[str, list[Host]] = {}
        for name, (kind, options) in self.plan.items():
            if kind == "public":
                host = lab.add_public()
            elif kind in ("hairpin", "no-hairpin"):
                group = str(options["group"])
                if group not in shared:
                    shared[group] = lab.add_nat("port-restricted", 2, hairpin=kind == "hairpin")
                host = shared[group].pop(0)
            else:
                timeout = options.get("binding_timeout")
                host = lab.add_natted(kind, binding_timeout=int(timeout) if timeout else None)
            self.hosts[name] = host
        for name, (kind, options) in self.plan.items():
            mode = "server" if kind == "public" else "client"
            extra = ["--mode", mode, "--nat-timescale", TIMESCALE, *self.extra]
            extra += [str(x) for x in options.get("flags", [])]  # type: ignore[attr-defined]
            self.daemons[name] = Daemon(lab, self.hosts[name], root, servers[:2], extra, name)
        for daemon in self.daemons.values():
            daemon.wait_ready()

    def wait_registered(self, timeout: float = 90.0) -> None:
        """Until every client daemon holds a registration with a rendezvous (its status
        names one that answered), or ``timeout``."""
        deadline = time.monotonic() + timeout
        waiting = [d for n, d in self.daemons.items() if self.plan[n][0] != "public"]
        while waiting and time.monotonic() < deadline:
            waiting = [d for d in waiting if not registered(d.status())]
            time.sleep(1.0)

    def connect(
        self, a: str, b: str, message: str, timeout: float = 10.0
    ) -> tuple[str, float, str]:
        """One ``nautilus-kad connect`` from ``a``'s daemon to ``b``'s node: (path or
        ``failed``, seconds it reported, the answer or the error)."""
        source, target = self.daemons[a], self.daemons[b]
        command = [*KAD, "connect", target.node_id, "--message", message,
                   "--timeout", str(timeout), "--data-dir", str(source.data_dir)]  # fmt: skip
        result = subprocess.run(
            source.host.argv(*command), capture_output=True, text=True, timeout=timeout + 60,
            check=False,
        )  # fmt: skip
        return parse_connect(result.returncode, result.stdout, result.stderr)


def registered(status: dict[str, object]) -> bool:
    """Whether a daemon's status shows a rendezvous that answered."""
    reach = status.get("reachability")
    servers = reach.get("rendezvous") if isinstance(reach, dict) else None
    return isinstance(servers, list) and any(isinstance(s, dict) and s.get("ok") for s in servers)


def parse_connect(code: int, stdout: str, stderr: str) -> tuple[str, float, str]:
    """What ``nautilus-kad connect`` printed: (``direct`` / ``relayed`` / ``failed``,
    seconds, the answer or the error line)."""
    if code != 0:
        return (
            "failed",
            float("nan"),
            (stderr.strip() or stdout.strip()).splitlines()[-1:][0]
            if (stderr.strip() or stdout.strip())
            else f"exit {code}",
        )
    text = stdout
    path = (
        "relayed"
        if re.search(r"\brelayed\b", text)
        else "direct"
        if re.search(r"\bdirect\b", text)
        else "failed"
    )
    took = re.search(r"(\d+(?:\.\d+)?)\s*(ms|s)\b", text)
    seconds = float("nan")
    if took is not None:
        seconds = float(took.group(1)) / (1000.0 if took.group(2) == "ms" else 1.0)
    return path, seconds, text.strip()


def run_cell(world: World, cell: Cell, tries: int, timeout: float = 10.0) -> CellResult:
    """``tries`` connects of ``cell`` (after its idle time, under its loss)."""
    result = CellResult(cell)
    if cell.idle:
        time.sleep(cell.idle)
    if cell.loss:
        world.lab.set_loss(cell.loss)
    try:
        for i in range(tries):
            message = f"m{i}-{cell.a}-{cell.b}"
            path, took, text = world.connect(cell.a, cell.b, message, timeout)
            if path in ("direct", "relayed") and message in text:
                setattr(result, path, getattr(result, path) + 1)
                result.times.append(took)
            else:
                result.failed += 1
                code = text.split(":", 1)[0][:60] if path == "failed" else f"bad answer {text!r}"
                result.codes[code] = result.codes.get(code, 0) + 1
    finally:
        if cell.loss:
            world.lab.set_loss(0)
    return result


KEEPALIVE_OFF: list[str] = ["--keepalive", "0"]
"""Flags of a daemon that sends no keepalives to its rendezvous (the binding-timeout cell)."""
BINDING_TIMEOUT = 4
IDLE = 10.0


def matrix_plan() -> tuple[dict[str, tuple[str, dict[str, object]]], list[Cell]]:
    """Every cell of the pair table (benchmarks/nat_pairs.py)."""
    hosts, cells = pair_cells()
    for kind in ("hairpin", "no-hairpin"):
        for i in (1, 2):
            hosts[f"{kind}{i}"] = (kind, {"group": kind})
        cells.append(Cell(f"same NAT, {kind}", f"{kind}1", f"{kind}2", "direct"))
    hosts["KA-on"] = ("port-restricted", {"binding_timeout": BINDING_TIMEOUT})
    hosts["KA-off"] = ("port-restricted", {"binding_timeout": BINDING_TIMEOUT,
                                           "flags": KEEPALIVE_OFF})  # fmt: skip
    cells.append(Cell(f"pub x PR({BINDING_TIMEOUT} s), keepalive", "pub1", "KA-on", "direct",
                      idle=IDLE))  # fmt: skip
    cells.append(Cell(f"pub x PR({BINDING_TIMEOUT} s), no keepalive", "pub1", "KA-off", "none",
                      idle=IDLE))  # fmt: skip
    cells.append(Cell("PR x PR, 20 % loss", "PR1", "PR2", "direct", loss=20))
    cells.append(Cell("SYM x PR, 20 % loss", "SYM1", "PR2", "relayed", loss=20))
    return hosts, cells
