"""The public asyncio API: :class:`Node`.

A ``Node`` owns one UDP socket and one :class:`~nautilus_kad.core.engine.KadEngine`. Every
operation is an engine command whose query id maps to a future; the matching engine event
resolves it.

With a data directory (``data_dir=``) the node keeps its key, its records, the records it
publishes and its routing table on disk (:mod:`nautilus_kad.persist`), so a restart keeps
its node id, serves what it held and rejoins through the peers it knew.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from ..core.addresses import parse_address
from ..core.blob import BlobConfig, BlobTree, build_tree, is_manifest, needs_blob
from ..core.config import KadConfig
from ..core.engine import KadEngine
from ..core.errors import (
    CasMismatchError,
    ConnectError,
    KadError,
    NoPeersError,
    QueryError,
    ValidationError,
)
from ..core.events import (
    BootstrapDone,
    Event,
    GetDone,
    LeaveDone,
    LookupDone,
    NodesAnswered,
    PeerAdded,
    PeerRemoved,
    PingDone,
    PutDone,
    QueryFailed,
)
from ..core.identity import Identity
from ..core.ids import NodeId, key_id
from ..core.limits import MAX_SALT_BYTES, VALUE_LIMITS
from ..core.messages import Address, Contact, ErrorCode, error_for
from ..core.records import (
    Record,
    RecordKind,
    SignedRecord,
    make_immutable,
    make_signed,
    signed_key,
)
from ..core.routing import RoutingTable
from ..core.storage import RecordStore
from ..persist import DataDir
from .blobs import Progress, fetch_value, published_pieces, store_pieces
from .channels import HUB_EVENTS, Channel, ChannelHub
from .transport import EngineProtocol, LoopClock, is_local_ip, open_endpoint

AddressLike = str | tuple[str, int]

_log = logging.getLogger("nautilus_kad.node")

_SYSTEM_RANDOM = random.SystemRandom()
"""Every node's randomness. A ``SystemRandom`` reads the OS on each call and keeps no state,
so one serves all the nodes of a process as it would one node per process (each instance
carries an unused Mersenne Twister state of 2.5 KiB)."""

SAVED_PEERS_TO_TRY = 64
"""Saved peers a restarted node pings to rejoin (the most recently seen ones)."""


@dataclass(frozen=True, slots=True)
class PutResult:
    """How a put went: the key it was stored under and who acknowledged it.

    For a value larger than a datagram, ``acks`` and ``stored_on`` are the root record's,
    and ``piece_acks`` how many nodes acknowledged each piece (chunk or manifest).
    """

    key: NodeId
    acks: int
    stored_on: tuple[Contact, ...]
    piece_acks: tuple[int, ...] = ()
    piece_lookups: int = 0
    """Lookups the pieces needed (far fewer than pieces: see core/blobflow.py)."""

    @property
    def pieces(self) -> int:
        return len(self.piece_acks)

    @property
    def min_piece_acks(self) -> int:
        """The fewest replicas any piece reached (the root's acks for a small value)."""
        return min(self.piece_acks, default=self.acks)


@dataclass(frozen=True, slots=True)
class SignedPutResult:
    """How a signed put went: the record's key and sequence number, and who stored it."""

    key: NodeId
    seq: int
    acks: int
    stored_on: tuple[Contact, ...]
    piece_acks: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PingResult:
    contact: Contact
    rtt: float


@dataclass(frozen=True, slots=True)
class GetResult:
    record: Record | None
    hops: int
    queries: int
    timeouts: int = 0
    """Requests of the get that timed out (no answer by its end)."""


class Node:
    """A Kademlia node on a real UDP socket.

    Create it with :meth:`start`; use it as an async context manager so it stops cleanly::

        async with await Node.start(port=0, bootstrap=["127.0.0.1:7400"]) as node:
            await node.put(b"key", b"value")
            assert await node.get(b"key") == b"value"
    """

    def __init__(
        self,
        engine: KadEngine,
        data_dir: DataDir | None = None,
        blob_config: BlobConfig | None = None,
    ) -> None:
        self._engine = engine
        self.blob_config = blob_config or BlobConfig()
        """Limits of values larger than a datagram (size, chunks in flight)."""

        self._data_dir = data_dir
        self._protocol: EngineProtocol | None = None
        self._address: Address = ("0.0.0.0", 0)
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._stopped = False
        self._tasks: list[asyncio.Task[None]] = []
        self._table_changed = False
        self._listeners: list[Callable[[Event], None]] = []
        self._join_addresses: list[AddressLike] = []
        self._hub = ChannelHub(engine, lambda: self._protocol)

    # --- life cycle ------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: Iterable[AddressLike] = (),
        *,
        config: KadConfig | None = None,
        identity: Identity | None = None,
        store: RecordStore | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        client_mode: bool = False,
        blob_config: BlobConfig | None = None,
    ) -> Node:
        """Bind ``host:port`` (port 0 picks a free one) and join through ``bootstrap``.

        ``data_dir`` makes the node durable: its key file (``node.key``, created on first use,
        so the node id survives restarts), its records and routing table live there. A node
        restarted on a data dir rejoins through the peers it saved, so ``bootstrap`` may be
        empty; if none of them answers it keeps trying in the background.

        A ``client_mode`` node looks up, puts and gets, but tells peers not to put it in
        their routing tables and stores nothing for others (short-lived or unreachable
        nodes). ``blob_config`` sets the largest value it writes and reads (default 1 MiB)
        and how many pieces of a large value are in flight. Raises :class:`NoPeersError`
        when bootstrap addresses were given and none answered.
        """
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop)
        directory = DataDir(data_dir) if data_dir is not None else None
        try:
            if directory is not None:
                identity = identity or directory.identity()
                store = store if store is not None else directory.store
            engine = KadEngine(
                identity or Identity.generate(),
                config=config,
                rng=_SYSTEM_RANDOM,  # txids and token secrets must be unguessable
                now=clock.now(),
                store=store,
                client_mode=client_mode,
            )
            node = cls(engine, directory, blob_config)
            protocol, address = await open_endpoint(engine, clock, host, port, node._on_event)
        except BaseException:
            if directory is not None:
                directory.close()
            raise
        node._protocol = protocol
        node._address = address
        engine.address = address
        engine.nat.is_local = is_local_ip  # bound to 0.0.0.0: is the external IP ours?
        engine.traversal.enable(clock.now())  # a client registers with rendezvous
        saved: list[Address] = []
        if directory is not None:
            node._restore_published()
            saved = [c.address for c in directory.store.load_peers(SAVED_PEERS_TO_TRY)]
            saved = [a for a in saved if a != address]
            node._tasks.append(loop.create_task(node._save_periodically()))
        protocol.flush()
        seeds = list(bootstrap)
        node._join_addresses = [*seeds, *saved]
        try:
            if seeds:
                await node.bootstrap([*seeds, *saved])
            elif saved:
                try:
                    await node.bootstrap(saved)
                except NoPeersError:
                    _log.warning("none of %d saved peers answered; retrying", len(saved))
                    node._start_rejoining()
        except BaseException:
            await node.stop(handoff=False)
            raise
        return node

    async def bootstrap(self, seeds: Iterable[AddressLike]) -> int:
        """Join through the given addresses; returns the routing-table size after joining."""
        addresses = [await _resolve(s, self._family) for s in seeds]
        event = await self._run(lambda now: self._engine.bootstrap(addresses, now))
        if isinstance(event, QueryFailed):
            raise NoPeersError(f"could not join: {event.reason}")
        assert isinstance(event, BootstrapDone)
        if self._data_dir is not None and len(self._engine.table):
            self._save_state()  # a crash from now on still finds these peers
        return event.table_size

    async def stop(self, *, handoff: bool = True) -> None:
        """Leave the network and close the socket; every operation still waiting fails.

        With ``handoff`` (the default) the node first hands each record it holds to the
        nodes that keep it once this one is gone, for at most ``leave_timeout`` seconds.
        ``handoff=False`` stops abruptly, as a crash would (peers repair the loss).
        With a data dir, the routing table and published records are saved first.
        """
        if self._stopped:
            return
        if handoff and self._protocol is not None:
            with contextlib.suppress(TimeoutError, QueryError):
                await asyncio.wait_for(
                    self._run(self._engine.leave),
                    self._engine.config.leave_timeout,
                )
        self._hub.stop()  # tells the peers of our channels, fails connects still running
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._protocol is not None:
            self._protocol.close()
        for future in self._futures.values():
            if not future.done():
                future.set_exception(QueryError("node stopped"))
        self._futures.clear()
        if self._data_dir is not None:
            try:
                self._save_state()
            except Exception:
                _log.exception("could not save the node's state to %s", self._data_dir.path)
            self._data_dir.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- operations ----------------------------------------------------------------------

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        ttl: float | None = None,
        republish: bool = True,
        progress: Progress | None = None,
    ) -> PutResult:
        """Store ``value`` under ``key`` on the k closest nodes (last writer wins).

        The record lives ``ttl`` seconds (default ``record_ttl``, 24 h) unless republished:
        with ``republish`` (the default) this node, as its publisher, re-puts it every
        ``publisher_republish_interval`` (22 h) while it runs (and after restarts, with a
        data dir), until a newer write replaces it or :meth:`unpublish` is called.

        A value larger than a datagram (up to ``blob_config.max_size``, 1 MiB) is stored as
        chunks and manifests (immutable records) first, then the record under ``key``
        refers to their root; ``progress(done, total)`` follows the bytes stored.

        Raises :class:`~nautilus_kad.core.errors.ValueTooLargeError` for values over the
        limit and :class:`QueryError` when fewer than ``store_quorum`` nodes stored it (or a
        piece of it), with the storers' refusals, such as a full store, in the message.
        """
        cfg = self._engine.config
        lifetime = int(ttl if ttl is not None else cfg.record_ttl)
        data, piece_acks, lookups = await self._store_large(
            bytes(value), RecordKind.OPEN, lifetime, republish, progress
        )
        now = self._now()
        record = Record(key_id(key), data, int(now * 1000), lifetime)
        event = await self._run(lambda now: self._engine.put(record, now, republish=republish))
        if isinstance(event, QueryFailed):
            raise QueryError(f"put failed: {event.reason}")
        assert isinstance(event, PutDone)
        if republish and self._data_dir is not None and not self._stopped:
            if piece_acks:
                self._data_dir.store.save_published(self._engine.published())
            else:
                self._data_dir.store.add_published(record, lifetime)
        if event.acks < cfg.store_quorum:
            texts = [text or code.name for code, text in event.errors[:3]]
            why = f" ({'; '.join(texts)})" if texts else ""
            raise QueryError(
                f"put reached {event.acks} of the {cfg.store_quorum} nodes it needs{why}"
            )
        return PutResult(event.key, event.acks, event.stored_on, piece_acks, lookups)

    async def put_immutable(
        self, value: bytes, *, ttl: float | None = None, progress: Progress | None = None
    ) -> NodeId:
        """Store ``value`` as an immutable record; returns its key, SHA-256(value).

        Every storer and every reader checks that the key is the value's hash, so nobody can
        serve anything else under it. For a value larger than a datagram the key is the
        SHA-256 of its root manifest, which commits to every byte just as well.
        """
        lifetime = self._lifetime(ttl)
        data, _, _ = await self._store_large(
            bytes(value), RecordKind.IMMUTABLE, lifetime, False, progress
        )
        record = make_immutable(data, lifetime)
        event = await self._run(lambda now: self._engine.put(record, now))
        self._check_put(event)
        return record.key

    async def get_immutable(
        self, key: NodeId | bytes, *, progress: Progress | None = None
    ) -> bytes | None:
        """The value whose SHA-256 is ``key`` (a :class:`NodeId` or its 32 bytes), if stored."""
        target = NodeId.from_bytes_exact(key) if isinstance(key, bytes) else NodeId(int(key))
        event = await self._run(
            lambda now: self._engine.get(target, now, kind=RecordKind.IMMUTABLE)
        )
        if isinstance(event, QueryFailed):
            raise QueryError(f"get failed: {event.reason}")
        assert isinstance(event, GetDone)
        if event.record is None:
            return None
        return await self._resolve(target, event.record.value, progress)

    async def _store_large(
        self,
        value: bytes,
        kind: RecordKind,
        lifetime: int,
        republish: bool,
        progress: Progress | None,
    ) -> tuple[bytes, tuple[int, ...], int]:
        """For a value over ``kind``'s inline limit: store its pieces and return the root
        manifest (the record's value), each piece's acks and the lookups they took. A small
        value is returned as it is, with no pieces."""
        limit = VALUE_LIMITS[kind]
        if not needs_blob(value, limit):
            return value, (), 0
        tree: BlobTree = build_tree(value, limit, self.blob_config)
        acks, lookups = await store_pieces(
            self._engine,
            self._run,
            tree.pieces,
            lifetime,
            self.blob_config,
            self._now,
            republish=republish,
            progress=progress,
        )
        quorum = self._engine.config.store_quorum
        short = sum(1 for n in acks if n < quorum)
        if short:
            raise QueryError(
                f"{short} of the {len(acks)} pieces of the value reached fewer than "
                f"the {quorum} nodes they need"
            )
        return tree.root, tuple(acks), lookups

    async def value_of(self, record: Record, *, progress: Progress | None = None) -> bytes:
        """The value a record found by :meth:`get_record` stands for: its own value, or for
        a value larger than a datagram the whole value, fetched and checked piece by piece."""
        return await self._resolve(record.key, record.value, progress)

    async def _resolve(self, key: NodeId, value: bytes, progress: Progress | None) -> bytes:
        """A record's value as the user stored it: fetched piece by piece if it is a root
        manifest (raises ``BlobFormatError`` or ``MissingChunksError``)."""
        if not is_manifest(value):
            return value
        return await fetch_value(
            self._engine, self._run, key, value, self.blob_config, progress=progress
        )

    async def put_signed(
        self,
        name: bytes,
        value: bytes,
        *,
        seq: int | None = None,
        cas: int | None = None,
        ttl: float | None = None,
        owner: Identity | None = None,
        progress: Progress | None = None,
    ) -> NodeId:
        """Publish ``value`` as this node's signed record ``name``; returns its key,
        SHA-256(public key ‖ name). :meth:`put_signed_record` also tells the sequence number
        and the storers.
        """
        result = await self.put_signed_record(
            name, value, seq=seq, cas=cas, ttl=ttl, owner=owner, progress=progress
        )
        return result.key

    async def put_signed_record(
        self,
        name: bytes,
        value: bytes,
        *,
        seq: int | None = None,
        cas: int | None = None,
        ttl: float | None = None,
        owner: Identity | None = None,
        progress: Progress | None = None,
    ) -> SignedPutResult:
        """Publish ``value`` as this node's signed record ``name`` (see :meth:`put_signed`).

        ``owner`` signs the record instead of the node's own key (a short-lived client
        publishing for a daemon's key, say: two nodes must not share one node id).

        ``seq`` is the record's sequence number; left out, it is one more than the highest
        the network holds (found with a quorum read) or than ``cas``. ``cas`` makes the put a
        compare-and-swap: it fails with :class:`CasMismatchError` when the record has been
        written past sequence ``cas`` since. :class:`StaleSequenceError` means the storers
        hold a newer (or an equal but different) sequence number; the node's own key signs
        the record, so :class:`BadSignatureError` only comes from a corrupted record.

        A value larger than a datagram is stored in pieces and the signature covers its
        root manifest, which commits to the whole value.
        """
        identity = owner if owner is not None else self._engine.identity
        salt = bytes(name)
        if len(salt) > MAX_SALT_BYTES:
            raise ValidationError(
                f"a signed record's name is at most {MAX_SALT_BYTES} bytes, got {len(salt)}"
            )
        if seq is None:
            current = await self.get_signed(identity.public_key, salt)
            if current is not None and cas is not None and current.seq > cas:
                raise CasMismatchError(
                    f"compare-and-swap failed: expected sequence {cas}, "
                    f"but the network holds sequence {current.seq}"
                )
            seq = max(
                current.seq + 1 if current is not None else 1,
                cas + 1 if cas is not None else 1,
            )
        lifetime = self._lifetime(ttl)
        data, piece_acks, _ = await self._store_large(
            bytes(value), RecordKind.SIGNED, lifetime, False, progress
        )
        record = make_signed(identity, salt, data, seq, lifetime)
        event = await self._run(lambda now: self._engine.put(record, now, cas=cas))
        done = self._check_put(event)
        return SignedPutResult(record.key, record.seq, done.acks, done.stored_on, piece_acks)

    async def get_signed(
        self, owner_public_key: bytes, name: bytes, *, progress: Progress | None = None
    ) -> SignedRecord | None:
        """The newest valid signed record ``name`` of the owner of ``owner_public_key``.

        Collects ``signed_get_quorum`` answers among the closest nodes, returns the highest
        sequence number and writes it back to replicas that served an older one. For a
        value larger than a datagram, ``value`` is the whole value (every piece checked
        against the signed root manifest) and ``signature`` is the one over that root.
        """
        owner = bytes(owner_public_key)
        if len(owner) != 32:
            raise ValidationError(f"an owner public key is 32 bytes, got {len(owner)}")
        key = signed_key(owner, bytes(name))
        event = await self._run(lambda now: self._engine.get(key, now, kind=RecordKind.SIGNED))
        if isinstance(event, QueryFailed):
            raise QueryError(f"get failed: {event.reason}")
        assert isinstance(event, GetDone)
        if event.record is None:
            return None
        signed = SignedRecord.from_record(event.record)
        if not is_manifest(signed.value):
            return signed
        value = await self._resolve(key, signed.value, progress)
        return dataclasses.replace(signed, value=value)

    def _lifetime(self, ttl: float | None) -> int:
        return int(ttl if ttl is not None else self._engine.config.record_ttl)

    def _check_put(self, event: Event) -> PutDone:
        """Raise the right error for a put that the storers refused.

        Refusals for a conflict (a newer sequence number, a failed compare-and-swap) win when
        at least as many storers refused as accepted, so one lying replica cannot fail a
        write, but a write most replicas contradict does not pass for a success.
        """
        if isinstance(event, QueryFailed):
            raise QueryError(f"put failed: {event.reason}")
        assert isinstance(event, PutDone)
        by_code: dict[ErrorCode, str] = {}
        for code, text in event.errors:
            by_code.setdefault(code, text)
        conflicts = [c for c, _ in event.errors if c in _CONFLICTS]
        quorum = self._engine.config.store_quorum
        if conflicts and len(conflicts) >= event.acks:
            code = min(conflicts, key=_SEVERITY.index)
            raise error_for(code, by_code[code])
        if event.acks < quorum:
            for code in _SEVERITY:
                if code in by_code:
                    raise error_for(code, by_code[code])
            raise QueryError(f"put reached {event.acks} of the {quorum} nodes it needs")
        return event

    def unpublish(self, key: bytes) -> bool:
        """Stop republishing ``key`` (its copies then expire with their TTL), and the pieces
        of a value larger than a datagram with it."""
        target = key_id(key)
        records = [record for record, _ in self._engine.published()]
        root = next((r for r in records if r.key == target), None)
        if root is not None:
            limit = self.blob_config.max_size
            # pieces another published value shares (the same content) keep being re-put
            shared: set[NodeId] = set()
            for other in records:
                if other.key != target and other.kind is RecordKind.OPEN:
                    shared.update(published_pieces(other, records, limit))
            for piece in published_pieces(root, records, limit):
                if piece not in shared:
                    self._engine.unpublish(piece)
        found = self._engine.unpublish(target)
        if found and self._data_dir is not None and not self._stopped:
            self._data_dir.store.save_published(self._engine.published())
        return found

    async def get(self, key: bytes, *, progress: Progress | None = None) -> bytes | None:
        """The value stored under ``key``, or ``None`` when the network has none.

        A value larger than a datagram is fetched piece by piece, each checked against its
        hash; ``progress(done, total)`` follows the bytes fetched. Raises
        :class:`~nautilus_kad.core.blob.MissingChunksError` (a :class:`QueryError`) when
        pieces cannot be found and ``BlobFormatError`` for a malformed one.
        """
        result = await self.get_record(key)
        if result.record is None:
            return None
        return await self._resolve(result.record.key, result.record.value, progress)

    async def get_record(self, key: bytes) -> GetResult:
        """Like :meth:`get`, with the whole record and the lookup's cost (for a value larger
        than a datagram, the record holds its root manifest)."""
        event = await self._run(lambda now: self._engine.get(key_id(key), now))
        if isinstance(event, QueryFailed):
            raise QueryError(f"get failed: {event.reason}")
        assert isinstance(event, GetDone)
        return GetResult(event.record, event.hops, event.queries, event.timeouts)

    async def find_node(self, node_id: NodeId | int) -> list[Contact]:
        """The k closest live nodes to ``node_id``, nearest first."""
        target = NodeId(int(node_id))
        event = await self._run(lambda now: self._engine.find_node(target, now))
        if isinstance(event, QueryFailed):
            raise QueryError(f"lookup failed: {event.reason}")
        assert isinstance(event, LookupDone)
        return list(event.contacts)

    async def find_node_at(self, address: AddressLike, node_id: NodeId | int) -> list[Contact]:
        """Ask the node at ``address`` alone (one FIND_NODE, no lookup) for the contacts it
        knows closest to ``node_id``; raises :class:`QueryError` when nothing answers."""
        where = _numeric_address(address, self._family) or await _resolve(address, self._family)
        target = NodeId(int(node_id))
        event = await self._run(lambda now: self._engine.find_node_at(where, target, now))
        if isinstance(event, QueryFailed):
            raise QueryError(event.reason)
        assert isinstance(event, NodesAnswered)
        return list(event.contacts)

    async def ping(self, address: AddressLike) -> PingResult:
        """PING an address; raises :class:`QueryError` when nothing answers in time."""
        target = _numeric_address(address, self._family) or await _resolve(address, self._family)
        event = await self._run(lambda now: self._engine.ping(target, now))
        if isinstance(event, QueryFailed):
            raise QueryError(event.reason)
        assert isinstance(event, PingDone)
        return PingResult(event.contact, event.rtt)

    # --- inspection ------------------------------------------------------------------

    @property
    def _family(self) -> int:
        return socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET

    @property
    def node_id(self) -> NodeId:
        return self._engine.node_id

    @property
    def public_key(self) -> bytes:
        """This node's Ed25519 public key (32 bytes): the owner of its signed records."""
        return self._engine.identity.public_key

    @property
    def address(self) -> Address:
        return self._address

    @property
    def routing_table(self) -> RoutingTable:
        return self._engine.table

    @property
    def engine(self) -> KadEngine:
        """The protocol engine (for inspection and metrics; drive it only through Node)."""
        return self._engine

    @property
    def stats(self) -> dict[str, float]:
        """The node's metrics: the engine's counters (``rx.dropped.rate_limited`` …), gauges
        of its defences (``ratelimit.blocked_now``, ``store.bytes`` …) and the limits they
        enforce (``limit.*``)."""
        return self._engine.metrics(self._now() if self._protocol is not None else None)

    @property
    def reachability(self) -> dict[str, object]:
        """Whether this node serves and why: ``mode`` (client or server), whether it is
        fixed by configuration, ``since`` when (loop time), the ``external`` addresses the
        vote adopted, the ``nat_class`` per address family, the ``last_probes`` and the NAT
        counters (also in :attr:`stats` as ``nat.*``); ``traversal``: our rendezvous (and
        whether each registered us) and the registrations, circuits and channels we hold.
        See docs/nat.md."""
        snapshot = self._engine.natlink.reachability(self._now())
        snapshot["traversal"] = self._engine.traversal.snapshot()
        return snapshot

    @property
    def data_dir(self) -> str | None:
        """The data directory, if the node has one."""
        return None if self._data_dir is None else str(self._data_dir.path)

    @property
    def rejoining(self) -> bool:
        """Whether its table is empty and it is retrying the addresses it joined through
        (none of its saved peers answered at start, or every peer it knew stopped answering)."""
        return any(not t.done() for t in self._tasks if t.get_name() == "nautilus-kad rejoin")

    def holds(self, key: bytes) -> bool:
        """Whether this node stores a live copy of the record under ``key`` itself."""
        return self._engine.store.get(key_id(key), self._now()) is not None

    # --- persistence -----------------------------------------------------------------

    def _save_state(self) -> None:
        """Save the routing table and the published records to the data dir."""
        assert self._data_dir is not None
        table = self._engine.table
        peers = []
        for contact in table:
            entry = table.get(contact.node_id)
            if entry is not None and not entry.is_stale:
                peers.append((contact, entry.last_seen))
        store = self._data_dir.store
        if peers or not len(table):
            store.save_peers(peers)
        store.save_published(self._engine.published())

    def _restore_published(self) -> None:
        """Resume republishing what this node published before a restart (soon: its
        records may have aged while it was down)."""
        assert self._data_dir is not None
        engine = self._engine
        now = self._now()
        spread = engine.config.repair_delay
        for record, base_ttl in self._data_dir.store.load_published():
            engine.publish_later(record, now + spread * engine.rng.random(), base_ttl)

    async def _save_periodically(self) -> None:
        interval = self._engine.config.state_save_interval
        while True:
            await asyncio.sleep(interval)
            if not self._table_changed:
                continue
            self._table_changed = False
            try:
                self._save_state()
            except Exception:
                assert self._data_dir is not None
                _log.exception("could not save the node's state to %s", self._data_dir.path)

    def _start_rejoining(self) -> None:
        """Keep trying the addresses the node joined through while its table is empty.

        A node whose every peer stopped answering (its own link went down, the laptop slept,
        the process was starved) ends with an empty table; nobody it knows is left to ask,
        so without this it would stay alone for good. The bootstrap seeds and saved peers
        are the only way back in."""
        if self._stopped or not self._join_addresses or self.rejoining:
            return
        self._tasks = [t for t in self._tasks if not t.done()]
        task = asyncio.get_running_loop().create_task(self._rejoin(), name="nautilus-kad rejoin")
        self._tasks.append(task)

    async def _rejoin(self) -> None:
        """Retry the join addresses until one answers (they may just be restarting too)."""
        interval = self._engine.config.rejoin_interval
        while not len(self._engine.table) and not self._stopped:
            await asyncio.sleep(interval)
            with contextlib.suppress(NoPeersError, QueryError):
                await self.bootstrap(self._join_addresses)

    def __repr__(self) -> str:
        host, port = self._address
        return f"Node({self.node_id.short()}… at {host}:{port})"

    # --- channels (NAT traversal: docs/nat.md) ---------------------------------------

    async def connect(self, node_id: bytes | NodeId, *, timeout: float = 10.0) -> Channel:
        """An encrypted datagram channel to the node ``node_id``: direct where the NATs
        allow it (punched through the target's rendezvous), else relayed by one of them.

        Raises :class:`ConnectError` (with a ``code``) when there is none within ``timeout``
        seconds; it never waits longer."""
        target = node_id if isinstance(node_id, NodeId) else NodeId.from_bytes_exact(node_id)
        if timeout <= 0:
            raise ConnectError("timeout", "timeout must be positive")
        return await self._hub.connect(target, timeout)

    def incoming(self) -> AsyncIterator[Channel]:
        """The channels peers open to us, as they open (``async for channel in
        node.incoming()``); ends when the node stops. :attr:`connect_policy` decides who
        may open one."""
        return self._hub.incoming()

    @property
    def connect_policy(self) -> Callable[[bytes, Address], bool] | None:
        """``policy(node_id, address) -> bool``: whether a peer may open a channel to us
        (None, the default: everyone). It runs inside datagram handling: keep it quick."""
        return self._engine.traversal.policy

    @connect_policy.setter
    def connect_policy(self, policy: Callable[[bytes, Address], bool] | None) -> None:
        self._engine.traversal.policy = policy

    # --- plumbing --------------------------------------------------------------------

    def _now(self) -> float:
        assert self._protocol is not None
        return self._protocol.now()

    async def _run(self, command: Any) -> Event:
        """Start an engine command and wait for the event that finishes it."""
        protocol = self._protocol
        if self._stopped or protocol is None:
            raise QueryError("node is stopped")
        future: asyncio.Future[Event] = protocol.loop.create_future()
        qid: int = command(protocol.now())
        self._futures[qid] = future
        protocol.flush_soon()
        return await future

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every engine event (peers added and removed, queries done)
        as it happens, before the node acts on it; returns a function that removes it.

        A listener must be quick and must not raise: it runs inside datagram handling.
        The daemon's live view and metrics are built on it.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _on_event(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener %r failed", listener)
        kind = type(event)  # events are final dataclasses: one set look-up per event
        if kind in HUB_EVENTS and self._hub.on_event(event):
            return
        if kind is PeerAdded or kind is PeerRemoved:
            self._table_changed = True
            if kind is PeerRemoved and not len(self._engine.table):
                self._start_rejoining()
            return
        if isinstance(event, LeaveDone):
            _log.info(
                "left: %d records handed on (%d stores, %d acknowledged)",
                event.records,
                event.stores_sent,
                event.acks,
            )
        qid = getattr(event, "query_id", None)
        if qid is None:
            return
        future = self._futures.pop(qid, None)
        if future is not None and not future.done():
            future.set_result(event)


_SEVERITY = (
    ErrorCode.CAS_MISMATCH,
    ErrorCode.STALE_SEQUENCE,
    ErrorCode.BAD_SIGNATURE,
    ErrorCode.INVALID_RECORD,
    ErrorCode.STALE_RECORD,
    ErrorCode.STORE_FULL,
    ErrorCode.QUOTA_EXCEEDED,
    ErrorCode.BAD_TOKEN,
    ErrorCode.SERVER_ERROR,
)
_CONFLICTS = frozenset({ErrorCode.CAS_MISMATCH, ErrorCode.STALE_SEQUENCE})


def _numeric_address(address: AddressLike, family: int) -> Address | None:
    """``address`` itself when it is a ``(host, port)`` pair :func:`_resolve` would return
    unchanged (the common case: an address the node already holds), without the coroutine
    :func:`_resolve` costs; None for anything else (then ask :func:`_resolve`)."""
    if type(address) is not tuple or len(address) != 2:
        return None
    return _numeric(address[0], address[1], family)


async def _resolve(address: AddressLike, family: int) -> Address:
    """Turn ``"host:port"`` or ``(host, port)`` into a numeric address of the socket's family
    (resolving names)."""
    if isinstance(address, str):
        host, port = parse_address(address)
    else:
        host, port = address
    numeric = _numeric(host, port, family)
    if numeric is not None:
        return numeric  # no resolver round trip for every ping of an address we hold
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_DGRAM
        )
    except OSError as exc:
        raise KadError(f"cannot resolve {host!r}: {exc}") from exc
    if not infos:
        raise KadError(f"no address found for {host!r}")
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), int(sockaddr[1]))


def _numeric(host: object, port: object, family: int) -> Address | None:
    """``(host, port)`` itself when it is already what the resolver would return: an IP
    literal of the socket's family in its canonical text form and a valid port."""
    if type(host) is not str or type(port) is not int or not 0 <= port <= 65535:
        return None
    return _canonical(host, port, family)


@functools.lru_cache(maxsize=1024)
def _canonical(host: str, port: int, family: int) -> Address | None:
    """:func:`_numeric` for checked types, cached: a client asks the same few addresses
    again and again, and the two conversions cost more than the look-up."""
    try:
        canonical = socket.inet_ntop(family, socket.inet_pton(family, host))
    except (OSError, ValueError):
        return None
    return (host, port) if canonical == host else None
