"""A loopback network of many real UDP nodes in one process: join, put and get latency, and
get latency right after half the nodes were stopped abruptly (no hand-off)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nautilus_kad import KadError, Node
from nautilus_kad.sim.report import percentile


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    local: int = 0
    hops: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time this process used during the phase (every node's work, all in one process)."""

    @property
    def cpu_ms_per_op(self) -> float:
        return self.cpu_seconds / self.count * 1e3 if self.count else float("nan")

    @property
    def count(self) -> int:
        return self.ok + self.failed

    @property
    def success(self) -> float:
        return self.ok / self.count if self.count else float("nan")

    def percentile_ms(self, q: float) -> float:
        return percentile(self.samples, q * 100) * 1e3

    @property
    def mean_hops(self) -> float:
        return sum(self.hops) / len(self.hops) if self.hops else float("nan")


@dataclass
class NetworkReport:
    nodes: int
    join_seconds: float = 0.0
    mean_table_size: float = 0.0
    puts: Latencies = field(default_factory=Latencies)
    put_acks: list[int] = field(default_factory=list)
    gets: Latencies = field(default_factory=Latencies)
    gets_after_failure: Latencies = field(default_factory=Latencies)
    survivors: int = 0


async def _join(count: int, host: str, progress: Callable[[str], None]) -> list[Node]:
    seed = await Node.start(host, 0)
    nodes = [seed]
    try:
        for i in range(1, count):
            node = await asyncio.wait_for(Node.start(host, 0, [seed.address]), 30)
            nodes.append(node)
            if i % 50 == 0:
                progress(f"{i + 1}/{count} nodes joined")
    except BaseException:
        for node in nodes:
            await node.stop(handoff=False)
        raise
    return nodes


async def _timed_get(
    node: Node, key: bytes, expected: bytes, into: Latencies, timeout: float
) -> None:
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(node.get_record(key), timeout)
    except (KadError, TimeoutError):
        into.samples.append(time.perf_counter() - start)
        into.failed += 1
        return
    into.samples.append(time.perf_counter() - start)
    into.hops.append(result.hops)
    if result.hops == 0 and result.queries == 0:
        into.local += 1
    if result.record is not None and result.record.value == expected:
        into.ok += 1
    else:
        into.failed += 1


async def run_network(
    *,
    nodes: int,
    puts: int,
    gets: int,
    seed: int = 1,
    host: str = "127.0.0.1",
    progress: Callable[[str], None] = lambda _: None,
) -> NetworkReport:
    rng = random.Random(seed)
    report = NetworkReport(nodes)
    progress(f"joining {nodes} nodes")
    start = time.perf_counter()
    network = await _join(nodes, host, progress)
    report.join_seconds = time.perf_counter() - start
    report.mean_table_size = sum(len(n.routing_table) for n in network) / len(network)
    try:
        progress(f"{puts} puts")
        values: dict[bytes, bytes] = {}
        cpu = time.process_time()
        for i in range(puts):
            key = f"bench-{seed}-{i}".encode()
            value = rng.randbytes(rng.randrange(16, 512))
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(rng.choice(network).put(key, value), 30)
            except (KadError, TimeoutError):
                report.puts.failed += 1
                continue
            report.puts.samples.append(time.perf_counter() - t0)
            report.puts.ok += 1
            report.put_acks.append(result.acks)
            values[key] = value
        report.puts.cpu_seconds = time.process_time() - cpu
        keys = list(values)
        if not keys:
            return report

        progress(f"{gets} gets")
        cpu = time.process_time()
        for _ in range(gets):
            key = rng.choice(keys)
            await _timed_get(rng.choice(network), key, values[key], report.gets, 30)
        report.gets.cpu_seconds = time.process_time() - cpu

        progress(f"stopping {nodes // 2} nodes abruptly, then {gets} gets")
        dead = set(rng.sample(range(len(network)), len(network) // 2))
        for i in sorted(dead):
            await network[i].stop(handoff=False)
        survivors = [n for i, n in enumerate(network) if i not in dead]
        report.survivors = len(survivors)
        cpu = time.process_time()
        for _ in range(gets):
            key = rng.choice(keys)
            await _timed_get(rng.choice(survivors), key, values[key], report.gets_after_failure, 30)
        report.gets_after_failure.cpu_seconds = time.process_time() - cpu
        return report
    finally:
        for node in network:
            await node.stop(handoff=False)
