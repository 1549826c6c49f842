"""The public asyncio API: :class:`Node`.

A ``Node`` owns one UDP socket and one :class:`~nautilus_kad.core.engine.KadEngine`. Every
operation is an engine command whose query id maps to a future; the matching engine event
resolves it.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from ..core.addresses import parse_address
from ..core.config import KadConfig
from ..core.engine import KadEngine
from ..core.errors import (
    CasMismatchError,
    KadError,
    NoPeersError,
    QueryError,
    ValidationError,
)
from ..core.events import (
    BootstrapDone,
    Event,
    GetDone,
    LookupDone,
    PingDone,
    PutDone,
    QueryFailed,
)
from ..core.identity import Identity
from ..core.ids import NodeId, key_id
from ..core.limits import MAX_SALT_BYTES
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
from .transport import EngineProtocol, LoopClock, open_endpoint

AddressLike = str | tuple[str, int]


@dataclass(frozen=True, slots=True)
class PutResult:
    """How a put went: the key it was stored under and who acknowledged it."""

    key: NodeId
    acks: int
    stored_on: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class SignedPutResult:
    """How a signed put went: the record's key and sequence number, and who stored it."""

    key: NodeId
    seq: int
    acks: int
    stored_on: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class PingResult:
    contact: Contact
    rtt: float


@dataclass(frozen=True, slots=True)
class GetResult:
    record: Record | None
    hops: int
    queries: int


class Node:
    """A Kademlia node on a real UDP socket.

    Create it with :meth:`start`; use it as an async context manager so it stops cleanly::

        async with await Node.start(port=0, bootstrap=["127.0.0.1:7400"]) as node:
            await node.put(b"key", b"value")
            assert await node.get(b"key") == b"value"
    """

    def __init__(self, engine: KadEngine) -> None:
        self._engine = engine
        self._protocol: EngineProtocol | None = None
        self._address: Address = ("0.0.0.0", 0)
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._stopped = False

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
        client_mode: bool = False,
    ) -> Node:
        """Bind ``host:port`` (port 0 picks a free one) and join through ``bootstrap``.

        A ``client_mode`` node looks up, puts and gets, but tells peers not to put it in
        their routing tables and stores nothing for others (short-lived or unreachable
        nodes). Raises :class:`NoPeersError` when bootstrap addresses were given and none
        answered.
        """
        clock = LoopClock(asyncio.get_running_loop())
        engine = KadEngine(
            identity or Identity.generate(),
            config=config,
            rng=random.SystemRandom(),  # txids and token secrets must be unguessable
            now=clock.now(),
            store=store,
            client_mode=client_mode,
        )
        node = cls(engine)
        protocol, address = await open_endpoint(engine, clock, host, port, node._on_event)
        node._protocol = protocol
        node._address = address
        engine.address = address
        protocol.flush()
        seeds = list(bootstrap)
        if seeds:
            try:
                await node.bootstrap(seeds)
            except BaseException:
                await node.stop()
                raise
        return node

    async def bootstrap(self, seeds: Iterable[AddressLike]) -> int:
        """Join through the given addresses; returns the routing-table size after joining."""
        addresses = [await _resolve(s, self._family) for s in seeds]
        event = await self._run(lambda now: self._engine.bootstrap(addresses, now))
        if isinstance(event, QueryFailed):
            raise NoPeersError(f"could not join: {event.reason}")
        assert isinstance(event, BootstrapDone)
        return event.table_size

    async def stop(self) -> None:
        """Close the socket and fail every operation still waiting."""
        if self._stopped:
            return
        self._stopped = True
        if self._protocol is not None:
            self._protocol.close()
        for future in self._futures.values():
            if not future.done():
                future.set_exception(QueryError("node stopped"))
        self._futures.clear()
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

    async def put(self, key: bytes, value: bytes, *, ttl: float | None = None) -> PutResult:
        """Store ``value`` under ``key`` on the k closest nodes (last writer wins).

        Raises :class:`~nautilus_kad.core.errors.ValueTooLargeError` for values over the
        inline limit and :class:`QueryError` when fewer than ``store_quorum`` nodes stored it.
        """
        cfg = self._engine.config
        lifetime = int(ttl if ttl is not None else cfg.record_ttl)
        now = self._now()
        record = Record(key_id(key), bytes(value), int(now * 1000), lifetime)
        event = await self._run(lambda now: self._engine.put(record, now))
        if isinstance(event, QueryFailed):
            raise QueryError(f"put failed: {event.reason}")
        assert isinstance(event, PutDone)
        if event.acks < cfg.store_quorum:
            raise QueryError(f"put reached {event.acks} of the {cfg.store_quorum} nodes it needs")
        return PutResult(event.key, event.acks, event.stored_on)

    async def put_immutable(self, value: bytes, *, ttl: float | None = None) -> NodeId:
        """Store ``value`` as an immutable record; returns its key, SHA-256(value).

        Every storer and every reader checks that the key is the value's hash, so nobody can
        serve anything else under it.
        """
        record = make_immutable(bytes(value), self._lifetime(ttl))
        event = await self._run(lambda now: self._engine.put(record, now))
        self._check_put(event)
        return record.key

    async def get_immutable(self, key: NodeId | bytes) -> bytes | None:
        """The value whose SHA-256 is ``key`` (a :class:`NodeId` or its 32 bytes), if stored."""
        target = NodeId.from_bytes_exact(key) if isinstance(key, bytes) else NodeId(int(key))
        event = await self._run(
            lambda now: self._engine.get(target, now, kind=RecordKind.IMMUTABLE)
        )
        if isinstance(event, QueryFailed):
            raise QueryError(f"get failed: {event.reason}")
        assert isinstance(event, GetDone)
        return None if event.record is None else event.record.value

    async def put_signed(
        self,
        name: bytes,
        value: bytes,
        *,
        seq: int | None = None,
        cas: int | None = None,
        ttl: float | None = None,
        owner: Identity | None = None,
    ) -> NodeId:
        """Publish ``value`` as this node's signed record ``name``; returns its key,
        SHA-256(public key ‖ name). :meth:`put_signed_record` also tells the sequence number
        and the storers.
        """
        result = await self.put_signed_record(name, value, seq=seq, cas=cas, ttl=ttl, owner=owner)
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
        record = make_signed(identity, salt, bytes(value), seq, self._lifetime(ttl))
        event = await self._run(lambda now: self._engine.put(record, now, cas=cas))
        done = self._check_put(event)
        return SignedPutResult(record.key, record.seq, done.acks, done.stored_on)

    async def get_signed(self, owner_public_key: bytes, name: bytes) -> SignedRecord | None:
        """The newest valid signed record ``name`` of the owner of ``owner_public_key``.

        Collects ``signed_get_quorum`` answers among the closest nodes, returns the highest
        sequence number and writes it back to replicas that served an older one.
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
        return SignedRecord.from_record(event.record)

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

    async def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or ``None`` when the network has none."""
        result = await self.get_record(key)
        return None if result.record is None else result.record.value

    async def get_record(self, key: bytes) -> GetResult:
        """Like :meth:`get`, with the whole record and the lookup's cost."""
        event = await self._run(lambda now: self._engine.get(key_id(key), now))
        if isinstance(event, QueryFailed):
            raise QueryError(f"get failed: {event.reason}")
        assert isinstance(event, GetDone)
        return GetResult(event.record, event.hops, event.queries)

    async def find_node(self, node_id: NodeId | int) -> list[Contact]:
        """The k closest live nodes to ``node_id``, nearest first."""
        target = NodeId(int(node_id))
        event = await self._run(lambda now: self._engine.find_node(target, now))
        if isinstance(event, QueryFailed):
            raise QueryError(f"lookup failed: {event.reason}")
        assert isinstance(event, LookupDone)
        return list(event.contacts)

    async def ping(self, address: AddressLike) -> PingResult:
        """PING an address; raises :class:`QueryError` when nothing answers in time."""
        target = await _resolve(address, self._family)
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
    def stats(self) -> dict[str, int]:
        return dict(self._engine.stats)

    def __repr__(self) -> str:
        host, port = self._address
        return f"Node({self.node_id.short()}… at {host}:{port})"

    # --- plumbing --------------------------------------------------------------------

    def _now(self) -> float:
        assert self._protocol is not None
        return self._protocol.now()

    async def _run(self, command: Any) -> Event:
        """Start an engine command and wait for the event that finishes it."""
        if self._stopped or self._protocol is None:
            raise QueryError("node is stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Event] = loop.create_future()
        qid: int = command(self._now())
        self._futures[qid] = future
        self._protocol.flush()
        return await future

    def _on_event(self, event: Event) -> None:
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
    ErrorCode.BAD_TOKEN,
    ErrorCode.SERVER_ERROR,
)
_CONFLICTS = frozenset({ErrorCode.CAS_MISMATCH, ErrorCode.STALE_SEQUENCE})


async def _resolve(address: AddressLike, family: int) -> Address:
    """Turn ``"host:port"`` or ``(host, port)`` into a numeric address of the socket's family
    (resolving names)."""
    if isinstance(address, str):
        host, port = parse_address(address)
    else:
        host, port = address
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
