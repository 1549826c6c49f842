"""Single-node throughput: how many PING / FIND_NODE requests one node answers per second.

The server is a real :class:`~nautilus_kad.Node` in this process (one core, the asyncio loop
it runs on); its routing table is first filled by ``fillers`` other nodes joining through it,
so every NODES answer carries k contacts. The load comes from a separate process
(:mod:`benchmarks.loadgen`) that prepares its requests, so the measured cost is the server's:
decode, authenticate, answer, authenticate, send. Each kind runs twice: with an Ed25519
signature on every datagram, then in a session (one handshake, then an AEAD per datagram).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

from nautilus_kad import Node

from . import loadgen

KINDS = ("PING", "FIND_NODE")
PHASES = [(mode, kind) for mode in loadgen.MODES for kind in KINDS]
"""(mode, kind) in the order the load generator runs them: signed first, then sessions."""


def phase_name(mode: str, kind: str) -> str:
    """``PING`` for signed requests, ``PING+session`` in a session."""
    return kind if mode == "signed" else f"{kind}+{mode}"


@dataclass
class ThroughputReport:
    table_size: int
    fillers: int
    window: int
    phases: list[loadgen.PhaseResult] = field(default_factory=list)
    server_requests: dict[str, int] = field(default_factory=dict)
    per_cpu_second: dict[str, float] = field(default_factory=dict)
    """Requests answered per second of this process's CPU time, while only that kind arrived:
    the throughput of one fully available core, whatever else runs on the machine."""
    error: str | None = None


class _CpuSampler:
    """Samples (process CPU time, request counters) so each phase's CPU cost can be told
    apart without knowing when the load generator switched phases: the request counter that
    grew names the kind, the session counter (grown with it, or not at all) the mode."""

    def __init__(self, server: Node) -> None:
        self.server = server
        names = [phase_name(m, k) for m, k in PHASES]
        self.cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        self.count: dict[str, int] = dict.fromkeys(names, 0)
        self._last = self._sample()

    def _sample(self) -> tuple[float, dict[str, int]]:
        stats = self.server.engine.stats
        counts = {k: stats.get(f"rx.request.{k}", 0) for k in KINDS}
        counts["session"] = stats.get("rx.session", 0)
        return time.process_time(), counts

    def tick(self) -> None:
        cpu, counts = self._sample()
        last_cpu, last_counts = self._last
        self._last = (cpu, counts)
        grown = [k for k in KINDS if counts[k] > last_counts[k]]
        if len(grown) != 1:
            return
        kind = grown[0]
        requests = counts[kind] - last_counts[kind]
        in_session = counts["session"] - last_counts["session"]
        if in_session == 0:
            name = phase_name("signed", kind)
        elif in_session >= 0.95 * requests:
            name = phase_name("session", kind)
        else:
            return  # a handshake in between: neither phase's cost alone
        self.cpu[name] += cpu - last_cpu
        self.count[name] += requests

    def rates(self) -> dict[str, float]:
        return {k: self.count[k] / self.cpu[k] for k in self.cpu if self.cpu[k] > 0}


async def _start_fillers(server: Node, count: int, batch: int = 10) -> list[Node]:
    nodes: list[Node] = []
    try:
        while len(nodes) < count:
            n = min(batch, count - len(nodes))
            nodes += await asyncio.wait_for(
                asyncio.gather(
                    *(Node.start(server.address[0], 0, [server.address]) for _ in range(n))
                ),
                30,
            )
    except BaseException:
        for node in nodes:
            await node.stop(handoff=False)
        raise
    return nodes


async def run_single_node(
    *,
    duration: float,
    fillers: int,
    window: int = 64,
    pool_size: int = 2048,
    warmup: float = 0.5,
    host: str = "127.0.0.1",
) -> ThroughputReport:
    loop = asyncio.get_running_loop()
    server = await Node.start(host, 0)
    filler_nodes: list[Node] = []
    try:
        filler_nodes = await _start_fillers(server, fillers)
        report = ThroughputReport(len(server.routing_table), fillers, window)
        before = dict(server.engine.stats)
        sampler = _CpuSampler(server)

        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=loadgen.client_main,
            args=(server.address, PHASES, duration, window, pool_size, warmup, sender),
            name="kad-loadgen",
            daemon=True,
        )
        process.start()
        sender.close()
        try:
            # Child start-up (imports, pre-signing) plus every phase, with room to spare.
            deadline = loop.time() + 60 + len(PHASES) * (warmup + duration + 2)
            while loop.time() < deadline:
                if receiver.poll():
                    try:
                        message: Any = receiver.recv()
                    except EOFError:
                        report.error = "load generator exited early"
                        break
                    if message is None:
                        break
                    if "error" in message:
                        report.error = str(message["error"])
                        break
                    report.phases.append(loadgen.PhaseResult(**message))
                    continue
                if not process.is_alive() and not receiver.poll():
                    report.error = f"load generator died (exit code {process.exitcode})"
                    break
                await asyncio.sleep(0.05)
                sampler.tick()
            else:
                report.error = "load generator timed out"
        finally:
            await loop.run_in_executor(None, process.join, 5)
            if process.is_alive():
                process.terminate()
                await loop.run_in_executor(None, process.join, 5)
            receiver.close()

        report.per_cpu_second = sampler.rates()
        after = server.engine.stats
        for kind in KINDS:
            name = f"rx.request.{kind}"
            report.server_requests[kind] = after.get(name, 0) - before.get(name, 0)
        return report
    finally:
        for node in filler_nodes:
            with contextlib.suppress(Exception):
                await node.stop(handoff=False)
        await server.stop(handoff=False)
