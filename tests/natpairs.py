"""The NAT pair matrix on the lab (tests/natlab.py) with real processes: shared by the CI
subset (tests/test_natlab_connect.py) and the full matrix (benchmarks/nat_pairs.py).

A :class:`World` is one lab: a few public servers (bootstrap, rendezvous and relays) and the
hosts a plan asks for, each behind its NAT (or public), every one running a real
:class:`~nautilus_kad.Node` that echoes channels (:class:`Peer`, ``python -m tests.natpeer``;
one process makes all the connects of a cell, so each is timed from the call). A
:class:`Cell` names two of those hosts and what RFC 4787 lets them do (``direct``,
``relayed``, or ``none`` when no channel can be had); :func:`run_cell` makes ``tries``
connects from the first to the second and counts what each got. :class:`Daemon` runs
``nautilus-kad run`` in a host (the CLI's own lab checks).
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.natlab import NAT_KINDS, Host, NatLab

ROOT = Path(__file__).resolve().parent.parent
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
    upgraded: int = 0
    """Relayed channels that turned direct (with ``--upgrade-wait``)."""

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


class Peer:
    """``python -m tests.natpeer`` inside a lab host: a node that echoes channels, makes
    connects on command and reports its counters (one JSON line per answer)."""

    def __init__(
        self, lab: NatLab, host: Host, log: Path, bootstrap: Sequence[Host], *,
        client: bool, flags: Sequence[str] = (),
    ) -> None:  # fmt: skip
        command = [sys.executable, "-m", "tests.natpeer", "--host", host.ip, "--port", str(PORT),
                   "--timescale", TIMESCALE, *flags]  # fmt: skip
        if client:
            command.append("--client")
        for seed in bootstrap:
            command += ["--bootstrap", f"{seed.ip}:{PORT}"]
        self.host, self.log = host, log
        self._err = log.open("w")
        self.process = lab.spawn(
            host, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            cwd=str(ROOT),
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.node_id = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def answer(self, timeout: float) -> dict[str, object]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.host.netns}: no answer in {timeout} s:\n"
                                 f"{self.log.read_text()[-3000:]}") from None  # fmt: skip
        result: dict[str, object] = json.loads(line)
        return result

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.node_id = str(self.answer(timeout)["ready"])

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def status(self) -> dict[str, object]:
        self.command("status")
        return self.answer(30.0)

    def connect(self, target: str, tries: int, timeout: float) -> list[dict[str, object]]:
        self.command(f"connect {target} {tries} {timeout}")
        return [self.answer(timeout + 30.0) for _ in range(tries)]


class World:
    """A lab with ``servers`` public server nodes and the hosts of ``hosts`` (see
    :class:`Plan`), each running a :class:`Peer`. A context manager: every process and
    namespace is removed on exit, also on failure."""

    def __init__(
        self, root: Path, hosts: dict[str, tuple[str, dict[str, object]]], servers: int = 3,
    ) -> None:  # fmt: skip
        self.root = root
        self.plan = hosts
        self.server_count = servers
        self.lab = NatLab()
        self.hosts: dict[str, Host] = {}
        self.peers: dict[str, Peer] = {}
        self.daemons: dict[str, Daemon] = {}
        """Hosts whose plan says ``daemon``: ``nautilus-kad run --echo`` instead of a Peer."""

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
        self.servers: list[Peer] = []
        for i in range(self.server_count):  # each joins through all before it
            host = lab.add_public()
            seeds = [p.host for p in self.servers]
            peer = Peer(lab, host, root / f"server{i}.log", seeds, client=False)
            peer.wait_ready()
            self.servers.append(peer)
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
                host = lab.add_natted(kind, binding_timeout=int(str(timeout)) if timeout else None)
            self.hosts[name] = host
        seeds = [p.host for p in self.servers[:2]]
        for name, (kind, options) in self.plan.items():
            flags = [str(x) for x in options.get("flags", [])]  # type: ignore[attr-defined]
            if options.get("daemon"):
                mode = "server" if kind == "public" else "client"
                flags = ["--mode", mode, "--nat-timescale", TIMESCALE, "--keepalive",
                         str(20 * float(TIMESCALE)), *flags]  # fmt: skip
                self.daemons[name] = Daemon(lab, self.hosts[name], root, seeds, flags, name)
                continue
            self.peers[name] = Peer(lab, self.hosts[name], root / f"{name}.log", seeds,
                                    client=kind != "public", flags=flags)  # fmt: skip
        for peer in self.peers.values():
            peer.wait_ready()
        for daemon in self.daemons.values():
            daemon.wait_ready()

    def wait_registered(self, timeout: float = 60.0) -> list[str]:
        """Until every client holds registrations with rendezvous, or ``timeout``: the
        names of those still without one."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in self.peers if self.plan[n][0] != "public"]
        while waiting and time.monotonic() < deadline:
            waiting = [n for n in waiting if not self.peers[n].status()["registered"]]
            time.sleep(0.5)
        return waiting

    def cli_connect(self, a: str, b: str, message: str, timeout: float = 10.0) -> dict[str, str]:
        """``nautilus-kad connect`` run in host ``a`` (a temporary client node joining through
        a server) to the daemon ``b``: what it printed, by label (``answer``, ``path``,
        ``time``), or ``{"error": ...}``."""
        source, target = self.hosts[a], self.daemons[b]
        seed = f"{self.servers[0].host.ip}:{PORT}"
        command = [*KAD, "connect", target.node_id, "--message", message, "--host", source.ip,
                   "-b", seed, "--timeout", str(timeout)]  # fmt: skip
        result = subprocess.run(
            source.argv(*command), capture_output=True, text=True, timeout=timeout + 60,
            check=False, cwd=str(ROOT),
        )  # fmt: skip
        if result.returncode != 0:
            return {"error": (result.stderr + result.stdout).strip()[-500:]}
        printed = {}
        for line in result.stdout.splitlines():
            label, _, value = line.partition(": ")
            printed[label.strip()] = value.strip()
        return printed

    def relay_bytes(self) -> int:
        """Bytes relayed so far by every server-mode node (the world's servers and its
        public hosts: any of them may be a client's rendezvous and relay)."""
        total = 0
        public = [p for n, p in self.peers.items() if self.plan[n][0] == "public"]
        for server in [*self.servers, *public]:
            stats = server.status()["stats"]
            assert isinstance(stats, dict)
            total += int(stats.get("relay.bytes", 0))
        return total


def run_cell(world: World, cell: Cell, tries: int, timeout: float = 10.0) -> CellResult:
    """``tries`` connects of ``cell`` (after its idle time, under its loss)."""
    result = CellResult(cell)
    if cell.idle:
        time.sleep(cell.idle)
    if cell.loss:
        world.lab.set_loss(cell.loss)
    try:
        answers = world.peers[cell.a].connect(world.peers[cell.b].node_id, tries, timeout)
    finally:
        if cell.loss:
            world.lab.set_loss(0)
    for answer in answers:
        path = answer["path"]
        if path in ("direct", "relayed") and answer["echoed"]:
            setattr(result, str(path), getattr(result, str(path)) + 1)
            result.times.append(float(answer["took"]))  # type: ignore[arg-type]
            result.upgraded += bool(answer.get("upgraded"))
        else:
            result.failed += 1
            code = str(answer["code"]) if path == "failed" else f"{path} without echo"
            if path != "failed" and answer.get("code"):
                code = f"{path}, then {answer['code']}"
            result.codes[code] = result.codes.get(code, 0) + 1
    return result


KEEPALIVE_OFF: list[str] = ["--keepalive", "100000"]
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
