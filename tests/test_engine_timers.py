"""The facade's own work (core/engine.py): its timer is the earliest deadline of every
component, ``handle_timer`` runs what is due, and each kind of request reaches the component
that serves it."""

from __future__ import annotations

from enginenet import Peer, lone_engine

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.context import Shared
from nautilus_kad.core.engine import FLAG_CLIENT, KadEngine
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import (
    Connect,
    ConnectReply,
    Register,
    RegisterReply,
    TraversalStatus,
)


def test_a_new_auto_node_is_woken_for_its_reachability_test_first() -> None:
    """A node in ``auto`` mode wants its first probe round at once: that NAT deadline is
    the engine's timer, and ``handle_timer`` runs the NAT layer, which finds no server to
    ask yet (an empty table) and retries a little later: the new, still earliest, timer."""
    engine = lone_engine(3, KadConfig(mode="auto"))
    assert engine.natlink.deadline == 0.0
    assert engine.get_timer() == 0.0 < engine.tokens.next_rotation
    engine.handle_timer(0.0)
    retry = engine.natlink.deadline
    assert 0.0 < retry < engine.config.refresh_check_interval
    assert engine.get_timer() == retry
    assert engine.natlink.reachability(0.0)["next_probe_at"] == retry
    assert engine.datagrams_to_send() == []  # nobody to ask


def test_the_store_expiry_tick_is_a_deadline_of_its_own() -> None:
    engine = lone_engine(4, KadConfig(expire_interval=0.5))
    assert engine.get_timer() == 0.5
    engine.handle_timer(0.5)
    assert engine.get_timer() == 1.0  # the next tick; nothing else is due before


def test_traversal_requests_reach_the_traversal_layer() -> None:
    """REGISTER and CONNECT are neither Kademlia nor NAT-test requests: the engine hands
    them to the traversal layer, which answers (a lease; no such target here)."""
    engine = lone_engine(5)
    peer = Peer(6)
    registered = peer.request(engine, Register(), 1.0, flags=FLAG_CLIENT).message
    assert isinstance(registered, RegisterReply) and registered.status is TraversalStatus.OK
    assert registered.lease > 0
    connect = Connect(NodeId(7), b"x" * 10, False)
    connected = peer.request(engine, connect, 1.0, flags=FLAG_CLIENT).message
    assert isinstance(connected, ConnectReply)
    assert connected.status is TraversalStatus.NOT_FOUND
    assert engine.stats["rx.request.REGISTER"] == 1 and engine.stats["rx.request.CONNECT"] == 1


def test_shared_fields_are_the_contexts_and_the_descriptor_on_the_class() -> None:
    """The facade's attributes that live in the node context (the ones drivers set): read
    on the class they are the descriptor; set on an engine, the context every component
    holds has the new value."""
    assert isinstance(KadEngine.__dict__["address"], Shared)
    assert KadEngine.address is KadEngine.__dict__["address"]
    engine = lone_engine(8)
    engine.address = ("10.9.9.9", 4001)
    assert engine.address == ("10.9.9.9", 4001)
    assert engine.natlink._ctx.address == ("10.9.9.9", 4001)
