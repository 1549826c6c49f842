"""The deterministic network simulator: the second driver of the sans-I/O engine.

Thousands of unmodified :class:`~nautilus_kad.core.engine.KadEngine` instances run on one
virtual clock over a seeded network model (latency, loss, partitions, dead hosts); every
datagram goes through the engine's real encoder and decoder. Nothing here re-implements
protocol logic.

Quick start::

    from nautilus_kad.sim import ScenarioSpec, run_scenario, summarize

    result = run_scenario(ScenarioSpec(nodes=1000, lookups=1000, seed=1))
    for row in summarize(result.records):
        print(row.phase, row.kind, row.success_rate, row.exact_rate, row.hops.p50)

or drive nodes by hand with :class:`Simulation` (see docs/simulator.md).

By default datagrams carry :class:`SimAuthenticator` tags, a keyed hash shared by all
simulated nodes: **not a security mechanism**, only a stand-in that keeps Ed25519 from
dominating the run time. ``real_crypto=True`` runs true Ed25519.
"""

from __future__ import annotations

from .auth import SimAuthenticator, SimKeyring
from .network import (
    ConstantLatency,
    Endpoint,
    LatencyModel,
    LogNormalLatency,
    Network,
    NetworkStats,
    UniformLatency,
    parse_duration,
    parse_latency,
)
from .report import (
    PlotUnavailableError,
    Spread,
    Summary,
    percentile,
    success_over_time,
    summarize,
    write_plots,
)
from .scenario import ChurnModel, ScenarioResult, ScenarioSpec, collector_paused, run_scenario
from .scheduler import Handle, Scheduler
from .simulation import (
    START_TIME,
    LiveIds,
    NodeSet,
    Operation,
    OpRecord,
    SimNode,
    Simulation,
    default_sim_config,
    sim_address,
)

__all__ = [
    "START_TIME",
    "ChurnModel",
    "ConstantLatency",
    "Endpoint",
    "Handle",
    "LatencyModel",
    "LiveIds",
    "LogNormalLatency",
    "Network",
    "NetworkStats",
    "NodeSet",
    "OpRecord",
    "Operation",
    "PlotUnavailableError",
    "ScenarioResult",
    "ScenarioSpec",
    "Scheduler",
    "SimAuthenticator",
    "SimKeyring",
    "SimNode",
    "Simulation",
    "Spread",
    "Summary",
    "UniformLatency",
    "collector_paused",
    "default_sim_config",
    "parse_duration",
    "parse_latency",
    "percentile",
    "run_scenario",
    "sim_address",
    "success_over_time",
    "summarize",
    "write_plots",
]
