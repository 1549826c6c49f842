"""The NAT scenario (sim/natscenario.py): what NATed nodes that claim to serve cost a network,
against the same network where they run as clients."""

from __future__ import annotations

import pytest

from nautilus_kad.sim.natscenario import NatScenarioSpec, run_nat_scenario


@pytest.mark.slow
def test_unreachable_servers_pollute_and_clients_do_not() -> None:
    small = dict(nodes=150, lookups=40, puts=15, seed=2)
    off = run_nat_scenario(NatScenarioSpec(policy="off", **small))  # type: ignore[arg-type]
    oracle = run_nat_scenario(NatScenarioSpec(policy="oracle", **small))  # type: ignore[arg-type]
    assert off.kinds == oracle.kinds and sum(off.kinds.values()) == 150
    assert off.joined == oracle.joined == 150
    # Before reachability checks: NATed nodes sit in nearly every reachable node's table,
    # and operations wait for them.
    assert off.polluting_contacts > 150 and off.tables_polluted > 0.5
    assert off.timeouts_per_op > 1.0
    # As clients they are in nobody's table, nothing times out, and everything works.
    assert oracle.polluting_contacts == 0 and oracle.timeouts_per_op == 0.0
    assert oracle.lookup_success == 1.0 and oracle.get_success == 1.0
    assert oracle.put_success == 1.0
    assert oracle.lookup_p50 < off.lookup_p50


def test_same_spec_same_run() -> None:
    spec = NatScenarioSpec(nodes=60, lookups=10, puts=5, policy="oracle", seed=4)
    assert run_nat_scenario(spec).digest == run_nat_scenario(spec).digest


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        NatScenarioSpec(policy="sometimes")
    with pytest.raises(ValueError, match="natted"):
        NatScenarioSpec(natted=1.0)
    with pytest.raises(ValueError, match="mix"):
        NatScenarioSpec(mix=(("cone-ish", 1.0),))
