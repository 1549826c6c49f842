"""A client's rendezvous follow the network as it grows (issue 12 point 1, and the
simulator's ``not_found`` connects of point 7).

A client behind a NAT registers with the servers closest to its own id so that a lookup of
its id finds them. Nobody looks a client up, so its table learns little of its own
neighbourhood after its join: rendezvous picked in a small network would stay while the
network grows, and an initiator's lookup would then find servers that do not know it. The
client looks up its own id every ``announce_interval`` and moves to the closest it finds.
"""

from __future__ import annotations

from dataclasses import replace

from nautilus_kad.core.events import ChannelOpened, ConnectFailed, Event
from nautilus_kad.core.traversalconfig import TraversalConfig
from nautilus_kad.sim.nat import NAT_TYPES
from nautilus_kad.sim.simulation import SimNode, Simulation, default_sim_config

ANNOUNCE = 60.0
CONFIG = default_sim_config().with_changes(
    traversal=replace(TraversalConfig(), announce_interval=ANNOUNCE)
)


def test_a_client_moves_to_the_closest_servers_of_a_grown_network_and_stays_reachable() -> None:
    sim = Simulation(seed=7, config=CONFIG)
    first = sim.add_node()
    sim.join(first, [])
    servers = [first]
    for _ in range(3):
        node = sim.add_node()
        sim.wait([sim.join(node, [s.address for s in servers])])
        servers.append(node)
    client = sim.add_node(nat=NAT_TYPES["port-restricted"], client_mode=True)
    sim.wait([sim.join(client, [s.address for s in servers])])
    for node in (*servers, client):
        node.engine.traversal.enable(sim.now)
        node.flush()
    sim.run_for(30.0)
    registrar = client.engine.traversal.registrar
    assert len(registrar.registered()) == 3  # the small network's three closest

    # The network grows sixteenfold; none of the newcomers ever hears of the client.
    joins = sim.grow(60)
    assert all(op.succeeded for op in joins)
    grown = [op.node for op in joins]
    for node in grown:
        node.engine.traversal.enable(sim.now)
        node.flush()
    sim.run_for(2 * ANNOUNCE)

    everyone = servers + grown
    closest = sorted(everyone, key=lambda n: int(n.node_id ^ client.node_id))[:3]
    registered = {s.contact.node_id for s in registrar.registered()}
    assert registered == {n.node_id for n in closest}
    assert client.engine.stats["rendezvous.client.repicked"] >= 1
    held = [n for n in everyone if n.engine.traversal.registrations.address_of(
        client.node_id, sim.now) is not None]  # fmt: skip
    assert set(closest) <= set(held)

    # A newcomer that never met the client finds it through its lookup's closest.
    outcomes: dict[tuple[int, int], str] = {}

    def on_event(node: SimNode, event: Event) -> None:
        if isinstance(event, ChannelOpened) and event.query_id:
            outcomes[(node.index, event.query_id)] = event.path
        elif isinstance(event, ConnectFailed):
            outcomes[(node.index, event.query_id)] = f"failed:{event.code}"

    sim.event_listener = on_event
    initiators = grown[-5:]
    for node in initiators:
        node.engine.traversal.connect(client.node_id, sim.now, 10.0)
        node.flush()
    sim.run_for(12.0)
    sim.event_listener = None
    assert sorted(outcomes.values()) == ["direct"] * len(initiators), outcomes
