"""Plans for storing and fetching a large value's pieces, without any I/O.

A driver (the asyncio :class:`~nautilus_kad.aio.node.Node`, or the simulator) asks a plan
what to do next, runs those engine commands, and reports what came back. The plans bound the
work in flight and decide the order; the engine does the protocol.

**Fetching** (:class:`GetPlan`): manifests before chunks (they name the chunks), every piece
checked on arrival against its hash and the exact size the canonical tree implies, references
to the piece itself or to an ancestor refused. A piece nobody has is recorded as missing;
the value is assembled only when every piece arrived.

**Storing** (:class:`PutPlan`): a piece's key is a random point, so a put that ran a full
lookup per piece would cost ~1000 lookups per MiB. Instead the plan keeps every node its
lookups found, and which regions of the id space they *prove* complete: a lookup for target
T that returned the k closest with the k-th at distance d knows every node x with
``x ^ T < d``, hence the whole prefix-aligned region of size ``2^(bitlength(d) - 1)`` around
T. A piece whose k closest known nodes lie within proven regions is stored on them directly
(write tokens are bound to our address, not to a key, so the tokens of those lookups serve);
otherwise the plan asks for a lookup inside the first unproven part. In a network of N nodes a
put needs about N/k lookups instead of one per piece. Pieces go in key order, so consecutive
pieces share neighbourhoods.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .blob import (
    BlobConfig,
    BlobFormatError,
    Manifest,
    MissingChunksError,
    check_child_manifest,
    check_chunk,
    child_lengths,
    decode_manifest,
)
from .ids import NodeId
from .messages import Contact

ID_BITS = 256
PROVEN_LOOKUPS_PER_PIECE = 3
"""Lookups a piece waits for at most before it is stored on the closest nodes known."""
FETCH_ATTEMPTS = 3
"""Times a piece nobody returned is asked for."""
STORE_ATTEMPTS = 3
"""Times a piece is sent when too few of its nodes acknowledge it."""
_COVER_DEPTH = 6
"""Halvings the coverage check tries when no single proven region holds a neighbourhood."""


# --- fetching ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One place in the tree where a piece is expected (a key may fill several)."""

    parent: int
    """Index of the parent node in ``GetPlan._nodes`` (-1: the root)."""
    index: int
    length: int
    level: int
    """Manifest level expected here; -1 for a data chunk."""
    ancestors: frozenset[NodeId]


@dataclass(slots=True)
class _Node:
    manifest: Manifest
    children: list[int | bytes | None]
    """Per child: the node index of a child manifest, a chunk's bytes, or None (pending)."""


class GetPlan:
    """Fetch and verify the pieces under a root manifest (see the module text).

    ``root_key`` is the user's record key: no piece may refer back to it.
    """

    def __init__(self, root_key: NodeId, root: bytes, config: BlobConfig) -> None:
        self.config = config
        manifest = decode_manifest(root, config.max_size)
        self.length = manifest.length
        self._nodes: list[_Node] = []
        self._waiting: dict[NodeId, list[_Slot]] = {}
        self._manifests: deque[NodeId] = deque()
        self._chunks: deque[NodeId] = deque()
        self._in_flight: set[NodeId] = set()
        self._tries: dict[NodeId, int] = {}
        self._missing: dict[NodeId, tuple[int, int]] = {}
        """Keys nobody had: (places in the tree, value bytes under them)."""
        self.pieces_total = 0
        self.pieces_done = 0
        self.bytes_done = 0
        self._add_node(manifest, frozenset({root_key}))

    # -- what to do next

    def next_fetches(self) -> list[NodeId]:
        """Keys to fetch now (immutable records), within the in-flight bound."""
        out: list[NodeId] = []
        room = self.config.in_flight - len(self._in_flight)
        for queue in (self._manifests, self._chunks):
            while room > 0 and queue:
                key = queue.popleft()
                self._in_flight.add(key)
                out.append(key)
                room -= 1
        return out

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def done(self) -> bool:
        return not self._in_flight and not self._manifests and not self._chunks

    # -- what came back

    def on_fetched(self, key: NodeId, data: bytes | None) -> None:
        """The record under ``key`` (None: nobody had it). Raises :class:`BlobFormatError`
        when it breaks the tree it was fetched for. A piece not found is asked for again
        (a get on a loaded network can miss holders that answer too late), at most
        :data:`FETCH_ATTEMPTS` times in all, before it counts as missing."""
        self._in_flight.discard(key)
        if data is None:
            tries = self._tries[key] = self._tries.get(key, 1) + 1
            if tries <= FETCH_ATTEMPTS:
                slots = self._waiting[key]
                (self._chunks if slots[0].level < 0 else self._manifests).append(key)
                return
        slots = self._waiting.pop(key, [])
        if data is None:
            self._missing[key] = (len(slots), sum(slot.length for slot in slots))
            return
        for slot in slots:
            if slot.level < 0:
                check_chunk(data, key, slot.length)
                self._fill(slot, data)
                self.bytes_done += len(data)
            else:
                manifest = decode_manifest(data, self.config.max_size)
                parent = self._nodes[slot.parent].manifest
                check_child_manifest(manifest, parent, slot.length)
                index = self._add_node(manifest, slot.ancestors | {key})
                self._fill(slot, index)
            self.pieces_done += 1

    def result(self) -> bytes:
        """The whole value; raises :class:`MissingChunksError` if pieces were not found."""
        assert self.done, "result() before the plan is done"
        if self._missing:
            pieces = sum(count for count, _ in self._missing.values())
            missing_bytes = min(self.length, sum(size for _, size in self._missing.values()))
            raise MissingChunksError(pieces, self.pieces_total, missing_bytes, self.length)
        out = bytearray()
        self._assemble(0, out)
        if len(out) != self.length:  # pragma: no cover - the per-piece checks prevent it
            raise BlobFormatError("assembled value has the wrong length")
        return bytes(out)

    # -- internals

    def _add_node(self, manifest: Manifest, ancestors: frozenset[NodeId]) -> int:
        index = len(self._nodes)
        self._nodes.append(_Node(manifest, [None] * len(manifest.children)))
        lengths = child_lengths(manifest)
        level = manifest.level - 1 if manifest.level > 0 else -1
        for i, (child, length) in enumerate(zip(manifest.children, lengths, strict=True)):
            if child in ancestors:
                raise BlobFormatError("manifest refers to itself or to a manifest above it")
            slot = _Slot(index, i, length, level, ancestors)
            waiting = self._waiting.get(child)
            self.pieces_total += 1
            if waiting is not None:
                waiting.append(slot)  # the same piece twice (repeated content): fetch once
                continue
            self._waiting[child] = [slot]
            (self._chunks if level < 0 else self._manifests).append(child)
        return index

    def _fill(self, slot: _Slot, value: int | bytes) -> None:
        self._nodes[slot.parent].children[slot.index] = value

    def _assemble(self, index: int, out: bytearray) -> None:
        for child in self._nodes[index].children:
            if isinstance(child, bytes):
                out += child
            else:
                assert child is not None
                self._assemble(child, out)


# --- storing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    """Run a FIND_NODE lookup for ``target`` and report its k closest."""

    target: NodeId


@dataclass(frozen=True, slots=True)
class Store:
    """STORE piece ``index`` on ``contacts`` (their write tokens are the engine's)."""

    index: int
    key: NodeId
    contacts: tuple[Contact, ...]


Action = Lookup | Store


@dataclass(slots=True)
class _Piece:
    key: NodeId
    lookups: int = 0
    acks: int = -1
    """Nodes that acknowledged it (-1: not stored yet)."""
    targets: int = 0
    """Nodes its last STORE went to."""
    attempts: int = 0


@dataclass(slots=True)
class Neighbourhoods:
    """The nodes lookups found, and the id-space regions they prove complete."""

    k: int
    known: dict[int, Contact] = field(default_factory=dict)
    proven: set[tuple[int, int]] = field(default_factory=set)
    """(prefix, m): every node whose id shifted right by m equals prefix is known."""

    def learn(self, target: NodeId, contacts: Sequence[Contact]) -> None:
        """A lookup for ``target`` returned ``contacts`` (the k closest that answered)."""
        for contact in contacts:
            self.known[int(contact.node_id)] = contact
        t = int(target)
        if len(contacts) < self.k:
            self.proven.add((0, ID_BITS))  # fewer than k nodes at all: we know them all
            return
        farthest = max(int(c.node_id) ^ t for c in contacts)
        m = farthest.bit_length() - 1
        if m >= 0:
            self.proven.add((t >> m, m))

    def forget(self, node_id: NodeId) -> None:
        self.known.pop(int(node_id), None)

    def closest(self, key: NodeId) -> list[Contact]:
        k = int(key)
        ids = heapq.nsmallest(self.k, self.known, key=lambda n: n ^ k)
        return [self.known[n] for n in ids]

    def gap(self, key: NodeId, closest: list[Contact]) -> tuple[NodeId, int] | None:
        """None if the k closest known to ``key`` are provably its true k closest; else
        ``(point, m)``: the first region not proven yet, the ids sharing all but the low
        ``m`` bits with ``point`` (a lookup for ``point`` settles it)."""
        k = int(key)
        full = len(closest) >= self.k
        m = (int(closest[-1].node_id) ^ k).bit_length() if full else ID_BITS
        return self._first_gap(k, m, _COVER_DEPTH)

    def _first_gap(self, k: int, m: int, depth: int) -> tuple[NodeId, int] | None:
        if self._proven_within(k, m):
            return None
        if depth == 0 or m == 0 or not self._proven_inside(k, m):
            return NodeId(k), m  # k lies in the region not proven yet
        own = self._first_gap(k, m - 1, depth - 1)
        if own is not None:
            return own
        return self._first_gap(k ^ (1 << (m - 1)), m - 1, depth - 1)

    def _proven_inside(self, k: int, m: int) -> bool:
        """Whether any proven region lies inside the region (k >> m, m): if none does, the
        region is one gap and splitting it would only ask more lookups."""
        prefix = k >> m
        return any(bits < m and p >> (m - bits) == prefix for p, bits in self.proven)

    def _proven_within(self, k: int, m: int) -> bool:
        proven = self.proven
        return any((k >> bits, bits) in proven for bits in range(m, ID_BITS + 1))


class PutPlan:
    """Store pieces on their k closest nodes with few lookups (see the module text)."""

    def __init__(self, keys: Sequence[NodeId], k: int, in_flight: int) -> None:
        self.k = k
        self.in_flight_limit = in_flight
        self.pieces = [_Piece(key) for key in keys]
        order = sorted(range(len(keys)), key=lambda i: int(keys[i]))
        self._queue: deque[int] = deque(order)
        self._storing: set[int] = set()
        self._lookups: dict[NodeId, list[int]] = {}
        """Lookups in flight and the pieces waiting on each."""
        self.hoods = Neighbourhoods(k)
        self.lookups_run = 0
        self.stored = 0
        self.retries = 0

    @property
    def done(self) -> bool:
        return self.stored == len(self.pieces)

    @property
    def busy(self) -> int:
        return len(self._storing) + len(self._lookups)

    def next_actions(self) -> list[Action]:
        """Lookups and stores to start now (lookups in flight count against the bound)."""
        out: list[Action] = []
        queue = self._queue
        while queue and self.busy < self.in_flight_limit:
            index = queue.popleft()
            piece = self.pieces[index]
            closest = self.hoods.closest(piece.key)
            gap = self.hoods.gap(piece.key, closest)
            if gap is None or piece.lookups >= PROVEN_LOOKUPS_PER_PIECE:
                self._storing.add(index)
                piece.targets = len(closest)
                piece.attempts += 1
                out.append(Store(index, piece.key, tuple(closest)))
                continue
            point, bits = gap
            waiters = self._lookup_within(int(point), bits)
            if waiters is None:
                waiters = self._lookups[point] = []
                self.lookups_run += 1
                out.append(Lookup(point))
            waiters.append(index)
        return out

    def _lookup_within(self, point: int, bits: int) -> list[int] | None:
        """The waiters of a lookup in flight inside the region, if any: its answer may
        settle the region, so the piece waits for it rather than asking again."""
        prefix = point >> bits
        for target, waiters in self._lookups.items():
            if int(target) >> bits == prefix:
                return waiters
        return None

    def on_lookup(self, target: NodeId, contacts: Sequence[Contact]) -> None:
        """A lookup finished (``contacts`` empty if it failed): its pieces try again."""
        if contacts:
            self.hoods.learn(target, contacts)
        waiters = self._lookups.pop(target, [])
        if waiters:
            # only the piece that asked counts it: each lookup proves a region nothing
            # proved before (its target lay in a gap), so waiting on others always ends
            self.pieces[waiters[0]].lookups += 1
        self._queue.extendleft(reversed(waiters))

    def on_stored(self, index: int, acks: int) -> None:
        """A piece's STOREs were answered (or timed out): ``acks`` nodes keep it. Fewer
        than half of the nodes it went to (a loaded network timing out) sends it again,
        at most :data:`STORE_ATTEMPTS` times in all."""
        self._storing.discard(index)
        piece = self.pieces[index]
        piece.acks = max(piece.acks, acks)
        if piece.acks < max(1, piece.targets // 2) and piece.attempts < STORE_ATTEMPTS:
            self.retries += 1
            self._queue.append(index)
            return
        self.stored += 1

    def acks(self) -> list[int]:
        return [piece.acks for piece in self.pieces]
