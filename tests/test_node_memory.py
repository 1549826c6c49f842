"""What keeps a node's memory small without changing what it does: one copy of each peer
address per node (aio/transport.py ``AddressBook``), bounded."""

from __future__ import annotations

import asyncio

import pytest
from netutil import LoopRunner, loopback_available

from nautilus_kad.aio.node import Node
from nautilus_kad.aio.transport import AddressBook


def _fresh(text: str) -> str:
    """An equal string that is a new object (as each received datagram's host is)."""
    return "".join(list(text))


def test_equal_addresses_are_one_object_and_hosts_are_shared() -> None:
    assert _fresh("127.0.0.1") is not _fresh("127.0.0.1")
    book = AddressBook(capacity=8)
    first = book.intern((_fresh("127.0.0.1"), 4000))
    again = book.intern((_fresh("127.0.0.1"), 4000))
    other = book.intern((_fresh("127.0.0.1"), 4001))
    assert first == ("127.0.0.1", 4000) and again is first
    assert other == ("127.0.0.1", 4001) and other[0] is first[0]
    assert len(book) == 2


def test_an_ipv6_socket_address_becomes_host_and_port() -> None:
    book = AddressBook()
    address = book.intern(("::1", 4000, 0, 0))
    assert address == ("::1", 4000)
    assert book.intern(("::1", 4000, 0, 0)) is address
    assert book.intern(("::1", 4000)) == address


def test_the_book_is_bounded_and_stays_correct_after_starting_afresh() -> None:
    book = AddressBook(capacity=4)
    handed = [book.intern((f"10.0.0.{i}", 9)) for i in range(10)]
    assert len(book) <= 4
    assert handed == [(f"10.0.0.{i}", 9) for i in range(10)]
    assert book.intern(("10.0.0.9", 9)) is handed[9]


def test_a_node_keeps_one_copy_of_each_peer_address() -> None:
    if not loopback_available("127.0.0.1"):
        pytest.fail("loopback UDP is not available")
    runner = LoopRunner()

    async def scenario() -> None:
        nodes = [await Node.start("127.0.0.1", 0)]
        for _ in range(5):
            nodes.append(await Node.start("127.0.0.1", 0, [nodes[0].address]))
        try:
            for node in nodes[1:]:
                for _ in range(3):  # repeated answers: a session, the answered-peers count
                    await node.ping(nodes[0].address)
            await asyncio.sleep(0.1)
            for node in nodes:
                engine = node.engine
                book = node._protocol.addresses  # type: ignore[union-attr]
                answered = list(engine.wire._answered)
                assert answered or node is nodes[0]
                # One host string for the one loopback host, shared by every contact and
                # every remembered address of this node.
                hosts = {id(c.host) for c in node.routing_table} | {id(a[0]) for a in answered}
                assert len(hosts) <= 1
                for address in answered:
                    assert book.intern(address) is address
                for session in engine.sessions:
                    assert book.intern(session.address) is session.address
            assert any(len(node.engine.sessions) for node in nodes)
        finally:
            for node in nodes:
                await node.stop(handoff=False)

    try:
        runner.run(scenario(), 60)
    finally:
        runner.close()
