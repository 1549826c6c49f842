"""Drives the large-value plans of :mod:`nautilus_kad.core.blobflow` on a live engine.

The plans decide what to look up, store and fetch, and bound the work in flight; this module
only turns their actions into engine commands (through the node's ``run``, which starts a
command and waits for the event that ends it) and reports the outcomes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..core.blob import BlobConfig, Manifest, decode_manifest, is_manifest
from ..core.blobflow import GetPlan, Lookup, PutPlan, Store
from ..core.engine import KadEngine
from ..core.events import Event, GetDone, LookupDone, PingDone, PutDone
from ..core.ids import NodeId
from ..core.messages import Contact
from ..core.records import Record, RecordKind

Command = Callable[[float], int]
Run = Callable[[Command], Awaitable[Event]]
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes in all) as pieces are stored or fetched."""
PIECE_ALPHA = 1
"""Requests in flight per piece get (the plan runs ``in_flight`` gets at once)."""
WARM_MIN_PIECES = 32
"""From this many pieces a put first opens a session with each node it stores on (see
:func:`store_pieces`)."""


async def store_pieces(
    engine: KadEngine,
    run: Run,
    pieces: Sequence[tuple[NodeId, bytes]],
    ttl: int,
    config: BlobConfig,
    now: Callable[[], float],
    *,
    republish: bool = False,
    progress: Progress | None = None,
) -> tuple[list[int], int]:
    """STORE every piece (an immutable record) on its k closest; returns the acks of each
    and the number of lookups the plan ran.

    A STORE never carries a session offer (a full chunk leaves no room), and the plan runs
    few lookups, so most nodes a large put stores on have no session with us: every STORE
    and its answer would be signed and verified (Ed25519, about 0.3 ms for the pair). So a
    put of many pieces first PINGs each new storer until a session forms (the engine offers
    one once a peer answered ``session_after_answers`` requests): a few signed exchanges per
    node, then every STORE sealed with the session's AEAD.
    """
    plan = PutPlan([key for key, _ in pieces], engine.config.k, config.in_flight)
    warm = _Warmer(engine, run, now) if len(pieces) >= WARM_MIN_PIECES else None
    total = sum(len(data) for _, data in pieces)
    done_bytes = 0
    tasks: dict[asyncio.Future[Event], Lookup | Store] = {}
    try:
        while not plan.done:
            for action in plan.next_actions():
                started = _start(engine, run, action, pieces, ttl, republish, warm)
                tasks[asyncio.ensure_future(started)] = action
            if not tasks:  # pragma: no cover - a plan with work left always has an action
                raise AssertionError("store plan stalled")
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                action = tasks.pop(task)
                event = task.result()
                if isinstance(action, Lookup):
                    contacts = event.contacts if isinstance(event, LookupDone) else ()
                    plan.on_lookup(action.target, contacts)
                else:
                    plan.on_stored(action.index, event.acks if isinstance(event, PutDone) else 0)
                    done_bytes += len(pieces[action.index][1])
                    if progress is not None:
                        progress(done_bytes, total)
    finally:
        for task in tasks:
            task.cancel()
    return plan.acks(), plan.lookups_run


async def _start(
    engine: KadEngine,
    run: Run,
    action: Lookup | Store,
    pieces: Sequence[tuple[NodeId, bytes]],
    ttl: int,
    republish: bool,
    warm: _Warmer | None,
) -> Event:
    if isinstance(action, Lookup):
        target = action.target
        return await run(lambda now: engine.find_node(target, now))
    key, data = pieces[action.index]
    record = Record(key, data, 0, ttl, RecordKind.IMMUTABLE)
    contacts = action.contacts
    if warm is not None:
        await asyncio.gather(*(warm.session(contact) for contact in contacts))
    return await run(lambda now: engine.store_at(record, contacts, now, republish=republish))


class _Warmer:
    """Opens a session with each storer once (PINGs until the engine has one)."""

    def __init__(self, engine: KadEngine, run: Run, now: Callable[[], float]) -> None:
        self._engine, self._run, self._now = engine, run, now
        self._started: dict[NodeId, asyncio.Future[None]] = {}

    def session(self, contact: Contact) -> Awaitable[None]:
        started = self._started.get(contact.node_id)
        if started is None:
            started = self._started[contact.node_id] = asyncio.ensure_future(self._open(contact))
        return started

    async def _open(self, contact: Contact) -> None:
        engine = self._engine
        address = contact.address
        for _ in range(engine.config.session_after_answers + 1):
            if engine.sessions.for_send(address, contact.node_id, self._now()) is not None:
                return
            event = await self._run(lambda now: engine.ping(address, now))
            if not isinstance(event, PingDone):
                return  # no answer: its STOREs will tell


async def fetch_value(
    engine: KadEngine,
    run: Run,
    root_key: NodeId,
    root: bytes,
    config: BlobConfig,
    *,
    progress: Progress | None = None,
) -> bytes:
    """The value under a root manifest, every piece verified (see :class:`GetPlan`).

    Raises :class:`~nautilus_kad.core.blob.BlobFormatError` for a malformed tree and
    :class:`~nautilus_kad.core.blob.MissingChunksError` when pieces cannot be found.
    """
    plan = GetPlan(root_key, root, config)
    tasks: dict[asyncio.Future[Event], NodeId] = {}
    try:
        while not plan.done:
            for key in plan.next_fetches():
                tasks[asyncio.ensure_future(_fetch(engine, run, key))] = key
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                key = tasks.pop(task)
                event = task.result()
                record = event.record if isinstance(event, GetDone) else None
                plan.on_fetched(key, None if record is None else record.value)
                if progress is not None:
                    progress(plan.bytes_done, plan.length)
    finally:
        for task in tasks:
            task.cancel()
    return plan.result()


def _fetch(engine: KadEngine, run: Run, key: NodeId) -> Awaitable[Event]:
    return run(lambda now: engine.get(key, now, kind=RecordKind.IMMUTABLE, alpha=PIECE_ALPHA))


def published_pieces(root: Record, published: Sequence[Record], max_size: int) -> list[NodeId]:
    """The keys of the pieces under ``root`` that this node publishes (to stop re-putting
    them with the root). Only the manifests it publishes itself are followed."""
    if not is_manifest(root.value):
        return []
    by_key = {record.key: record for record in published}
    out: list[NodeId] = []
    stack: list[Manifest] = [decode_manifest(root.value, max_size)]
    seen: set[NodeId] = set()
    while stack:
        manifest = stack.pop()
        for child in manifest.children:
            record = by_key.get(child)
            if record is None or child in seen:
                continue
            seen.add(child)
            out.append(child)
            if manifest.level > 0:
                stack.append(decode_manifest(record.value, max_size))
    return out
