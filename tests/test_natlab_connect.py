"""NAT traversal on real Linux NATs (issue 12 point 6), the CI subset of the pair matrix:
nodes in network namespaces behind nftables NATs (tests/natlab.py) connect to each other
through the real protocol (tests/natpeer.py runs a :class:`~nautilus_kad.Node` per host).

* two port-restricted NATs: every connect gets a direct channel;
* two symmetric NATs: every connect gets a relayed channel;
* a relayed channel (the two NATs could not reach each other at first) moves to the direct
  path once it opens, and the relay then carries nothing;
* ``nautilus-kad connect`` gets the answer of a ``nautilus-kad run --echo`` behind a NAT;
* a port-restricted NAT whose binding timeout (4 s) is shorter than the idle time (10 s):
  a node sending keepalives stays reachable, one that does not is not.

The full matrix (every pair, hairpinning, loss) and the time targets (direct within 2 s,
relayed within 3 s) are ``benchmarks/nat_pairs.py``: speed lives in benchmarks, not in tests;
here every connect must only end within its own timeout (never hang). These need
root, ``ip`` and ``nft``: they skip without them, and fail when ``CI`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.natlab import lab_namespaces, require_lab
from tests.natpairs import BINDING_TIMEOUT, IDLE, KEEPALIVE_OFF, Cell, World, run_cell

pytestmark = pytest.mark.natlab

UPGRADE = ["--upgrade-interval", "1.0"]
"""While relayed, try the direct path every 1 s (6 tries: a window that a loaded machine's
delays before the path opens do not use up; the scaled circuit lasts 6 s)."""
HOSTS: dict[str, tuple[str, dict[str, object]]] = {
    "pub1": ("public", {}),
    "PR1": ("port-restricted", {"flags": UPGRADE}),
    "PR2": ("port-restricted", {"flags": UPGRADE}),
    "SYM1": ("symmetric", {}),
    "SYM2": ("symmetric", {}),
    "KA-on": ("port-restricted", {"binding_timeout": BINDING_TIMEOUT}),
    "KA-off": ("port-restricted", {"binding_timeout": BINDING_TIMEOUT, "flags": KEEPALIVE_OFF}),
    "echo": ("port-restricted", {"daemon": True}),  # nautilus-kad run --echo
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_lab()
    with World(tmp_path_factory.mktemp("natlab-connect"), HOSTS) as built:
        assert built.wait_registered() == []  # every client holds a rendezvous
        yield built
    assert not any(n.startswith(built.lab.tag) for n in lab_namespaces())


def test_port_restricted_pair_connects_directly(world: World) -> None:
    result = run_cell(world, Cell("PR x PR", "PR1", "PR2", "direct"), tries=5)
    assert (result.direct, result.relayed, result.failed) == (5, 0, 0), result
    assert max(result.times) < 10.0, result.times  # ended within the connect timeout


# solo: the relay counter is read right after; failed once on the xdist workers at load
# ~22 and passed on the rerun, so nothing runs beside it.
@pytest.mark.solo
def test_symmetric_pair_gets_a_relayed_channel(world: World) -> None:
    before = world.relay_bytes()
    result = run_cell(world, Cell("SYM x SYM", "SYM1", "SYM2", "relayed"), tries=2)
    assert (result.direct, result.relayed, result.failed) == (0, 2, 0), result
    assert max(result.times) < 10.0, result.times  # ended within the connect timeout
    assert world.relay_bytes() > before  # the echoes went through a relay


def test_a_relayed_channel_moves_to_the_direct_path_and_the_relay_goes_quiet(
    world: World,
) -> None:
    """No retry: a try that never upgraded (about once in three module runs on the loaded
    machine) was the peer's hold loop sending as fast as its echoes came back, about 1 700
    datagrams a second, which used up the circuit's 128 KiB per direction in about 2 s; when
    the machine was slow to lift the block, the relay ended the circuit before the direct
    path opened (reproduced by lifting the block 5.5 s late: 2 of 2 closed on the relay's end
    notice). The hold now sends every 0.1 s, as documented. A channel that did upgrade and
    then carried nothing direct was a race, also fixed: the target closed on the relay's end
    notice before the initiator's first direct datagram (test_traversal_net's
    did-not-upgrade test)."""
    a, b = world.hosts["PR1"], world.hosts["PR2"]
    assert a.wan_ip is not None and b.wan_ip is not None
    peer = world.peers["PR1"]
    world.lab.block(a.wan_ip, b.wan_ip)  # the NATs cannot reach each other: relayed
    try:
        peer.command(f"hold {world.peers['PR2'].node_id} 12")
        assert peer.answer(15.0) == {"event": "open", "path": "relayed"}
    finally:
        world.lab.block(a.wan_ip, b.wan_ip, blocked=False)
    event = peer.answer(20.0)
    assert event == {"event": "direct"}, event  # else the hold's summary line
    time.sleep(3.0)  # a later punch got through; a few seconds on, the relay is quiet
    quiet = world.relay_bytes()
    summary = peer.answer(20.0)
    assert world.relay_bytes() == quiet
    assert int(str(summary["echoed_direct"])) >= 10, summary


def test_the_cli_connects_to_a_run_echo_daemon_behind_a_nat(world: World) -> None:
    """``nautilus-kad connect`` from behind one port-restricted NAT to ``nautilus-kad run
    --echo`` behind another: the answer, the direct path and the time."""
    printed = world.cli_connect("PR1", "echo", "hello through two NATs")
    assert printed.get("answer") == "hello through two NATs", printed
    assert printed.get("path") == "direct", printed
    assert printed.get("time", "").endswith(")") and " ms (connect " in printed["time"], printed


def test_keepalives_keep_a_node_reachable_past_its_nat_binding_timeout(world: World) -> None:
    # both have been idle (but for keepalives) since they registered; make sure it is longer
    # than the binding timeout, then each gets one connect from a public node
    on = run_cell(world, Cell("keepalive", "pub1", "KA-on", "direct", idle=IDLE), tries=1)
    assert on.direct == 1, on
    off = run_cell(world, Cell("no keepalive", "pub1", "KA-off", "none"), tries=1, timeout=5.0)
    assert off.failed == 1, off
