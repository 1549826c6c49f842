"""The simulator's connect scenario (sim/connectscenario.py) at CI size: connects between
random pairs of a network that is 90 % NATed end with a channel or a failure code, never
hang; channels carry a datagram; the path follows what the two NATs allow; the relay load
is counted per server; and a run is reproducible from its seed."""

from __future__ import annotations

from nautilus_kad.core.natconfig import NatConfig
from nautilus_kad.sim.connectscenario import (
    ConnectScenarioSpec,
    kind_pairs,
    run_connect_scenario,
)
from nautilus_kad.sim.simulation import default_sim_config

CONFIG = default_sim_config().with_changes(nat=NatConfig(vote_prefix_v4=32))


def test_connects_in_a_mostly_natted_network_end_on_the_path_the_nats_allow() -> None:
    spec = ConnectScenarioSpec(nodes=80, connects=30, seed=3, settle=40.0, config=CONFIG)
    result = run_connect_scenario(spec)
    assert result.joined == 80
    assert sum(result.outcomes.values()) == 30
    assert result.outcomes["hung"] == 0  # every connect ended by its deadline
    channels = result.outcomes["direct"] + result.outcomes["relayed"]
    assert result.delivered == channels  # every channel carried its first datagram
    assert result.share("failed") <= 0.2, result.outcomes  # the benchmark reports the share
    for pair, counts in result.by_pair.items():
        kinds = set(pair.split(" x "))
        if "symmetric" not in kinds:  # two endpoint-independent mappings: always punched
            assert counts["relayed"] == 0, (pair, counts)
        elif kinds <= {"symmetric", "port-restricted"}:  # only a relay joins them
            assert counts["direct"] == 0, (pair, counts)
    relayed = result.outcomes["relayed"]
    assert sum(result.circuits) >= relayed  # every relayed channel had a circuit
    assert (result.relaying_servers > 0) is (relayed > 0)
    assert result.stats["connect.started"] == 30
    assert [row[0] for row in kind_pairs(result)] == sorted(result.by_pair)


def test_a_connect_scenario_is_reproducible_from_its_seed() -> None:
    spec = ConnectScenarioSpec(nodes=30, connects=6, seed=5, settle=30.0, config=CONFIG)
    first, second = run_connect_scenario(spec), run_connect_scenario(spec)
    assert first.digest == second.digest
    assert first.outcomes == second.outcomes
