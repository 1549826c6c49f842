"""Node.add_listener: the hook the daemon's live view and metrics are built on."""

from __future__ import annotations

import asyncio

import pytest

from nautilus_kad import Node
from nautilus_kad.core.events import Event, PeerAdded, PingDone


@pytest.mark.integration
def test_a_listener_sees_peers_and_finished_queries_until_removed() -> None:
    async def main() -> None:
        async with await Node.start(port=0) as seed, await Node.start(port=0) as node:
            seen: list[Event] = []
            remove = node.add_listener(seen.append)
            node.add_listener(lambda _event: 1 / 0)  # a failing listener harms nobody
            await node.bootstrap([seed.address])
            await node.ping(seed.address)
            assert any(isinstance(e, PeerAdded) and e.contact.node_id == seed.node_id for e in seen)
            assert any(isinstance(e, PingDone) for e in seen)
            remove()
            count = len(seen)
            await node.ping(seed.address)
            assert len(seen) == count

    asyncio.run(asyncio.wait_for(main(), 20))
