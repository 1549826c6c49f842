"""A node whose every peer stopped answering finds its way back through its join address.

Real UDP sockets on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from nautilus_kad import KadConfig, Node
from nautilus_kad.core.errors import QueryError
from nautilus_kad.core.ids import NodeId

pytestmark = pytest.mark.integration

CONFIG = KadConfig(
    max_failures=1, rejoin_interval=0.1, request_timeout=0.3, max_soft_timeout=0.2, slow_grace=0.0
)


async def _until(predicate: object, limit: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_node_left_alone_rejoins_through_its_bootstrap_address() -> None:
    async def scenario() -> None:
        seed = await Node.start(config=CONFIG)
        seed_address = seed.address
        node = await Node.start(bootstrap=[seed_address], config=CONFIG)
        replacement: Node | None = None
        try:
            assert len(node.engine.table) == 1
            await seed.stop(handoff=False)
            # The only peer it knew is gone: the failed lookup empties its table.
            with contextlib.suppress(QueryError):
                await node.find_node(NodeId.random(random.Random(1)))
            assert await _until(lambda: len(node.engine.table) == 0, 5.0)
            assert node.rejoining
            # A node comes up at the bootstrap address (the seed restarted with a new key).
            replacement = await Node.start(
                host=seed_address[0], port=seed_address[1], config=CONFIG
            )
            assert await _until(lambda: len(node.engine.table) == 1, 5.0)
            assert [c.node_id for c in node.routing_table] == [replacement.node_id]
            assert await _until(lambda: not node.rejoining, 5.0)
        finally:
            await node.stop(handoff=False)
            if replacement is not None:
                await replacement.stop(handoff=False)
            await seed.stop(handoff=False)

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_node_that_never_had_a_join_address_does_not_retry() -> None:
    async def scenario() -> None:
        seed = await Node.start(config=CONFIG)
        node = await Node.start(config=CONFIG)
        try:
            await node.bootstrap([seed.address])  # joined later, by hand: nothing to retry
            await seed.stop(handoff=False)
            with contextlib.suppress(QueryError):
                await node.find_node(NodeId.random(random.Random(1)))
            assert await _until(lambda: len(node.engine.table) == 0, 5.0)
            assert not node.rejoining
        finally:
            await node.stop(handoff=False)
            await seed.stop(handoff=False)

    asyncio.run(asyncio.wait_for(scenario(), 30))
