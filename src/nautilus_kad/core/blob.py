"""Values larger than a datagram: the chunk and manifest format.

A value that fits a record inline is stored exactly as before. A larger one (up to
:attr:`BlobConfig.max_size`, 1 MiB by default) is cut into chunks of ``chunk_size`` bytes,
each stored as an ordinary immutable record (key = SHA-256(chunk)). Manifests list the chunks'
keys; when one manifest cannot list them all, manifests of manifests are added until the top
one fits the user's record, whose value is that *root manifest*. So the tree is a Merkle tree:
the root commits to every byte, an immutable large value's key (SHA-256 of the root) commits
to its content, and a signed one's signature (over the root) to the whole value.

A manifest is ``MAGIC ‖ msgpack([version, level, length, chunk_size, hashes])``: ``level`` 0
lists data chunks, level n lists manifests of level n - 1; ``length`` is the number of value
bytes below it; ``hashes`` the children's 32-byte keys, concatenated. The tree is canonical
(every chunk but the last is full, and a child of a level-n manifest covers exactly
``chunk_size * fanout^n`` bytes but for the last), so a reader checks each piece's size and
structure as it arrives and refuses anything else. A small value that happens to start with
:data:`MAGIC` is stored as a one-chunk tree, so a reader never mistakes a value for a
manifest.

This module is pure (no I/O): building the tree, decoding a manifest strictly, checking a
child against its parent. :mod:`.blobflow` plans the fetching and storing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import QueryError, ValidationError, ValueTooLargeError
from .ids import NodeId
from .limits import IMMUTABLE_VALUE_LIMIT

MAGIC = b"\xc1nkb"
"""Prefix of every manifest. 0xC1 is the one byte msgpack never uses, so no msgpack-encoded
value starts with it; a user value that does is stored as a blob (see the module text)."""
FORMAT_VERSION = 1
HASH_BYTES = 32
MAX_DEPTH = 8
"""Levels of manifests a reader follows at most (1 MiB needs 3 with 1000-byte chunks)."""
DEFAULT_MAX_SIZE = 1 << 20
_MAX_LENGTH_FIELD = 2**32 - 1
_MIN_CHUNK = 64


class BlobFormatError(ValidationError):
    """A manifest or chunk breaks the format: wrong size, structure, level, a reference to
    itself or an ancestor, or a length over the reader's limit."""


class MissingChunksError(QueryError):
    """Pieces of a large value could not be found on the network."""

    def __init__(self, missing_pieces: int, total_pieces: int, missing_bytes: int, total: int):
        super().__init__(
            f"could not find {missing_pieces} of {total_pieces} pieces of the value "
            f"({missing_bytes} of {total} bytes missing)"
        )
        self.missing_pieces = missing_pieces
        self.total_pieces = total_pieces
        self.missing_bytes = missing_bytes
        self.total = total


@dataclass(frozen=True, slots=True)
class BlobConfig:
    """How large values are cut and fetched.

    ``max_size`` bounds what this node writes and what it agrees to read (a manifest claiming
    more is refused before anything else is fetched). ``in_flight`` bounds the chunk stores
    and fetches running at once.
    """

    max_size: int = DEFAULT_MAX_SIZE
    chunk_size: int = IMMUTABLE_VALUE_LIMIT
    in_flight: int = 8

    def __post_init__(self) -> None:
        if not _MIN_CHUNK <= self.chunk_size <= IMMUTABLE_VALUE_LIMIT:
            raise ValueError(
                f"chunk_size must be {_MIN_CHUNK}..{IMMUTABLE_VALUE_LIMIT}, got {self.chunk_size}"
            )
        if not 1 <= self.max_size <= _MAX_LENGTH_FIELD:
            raise ValueError(f"max_size must be 1..{_MAX_LENGTH_FIELD}, got {self.max_size}")
        if self.in_flight < 1:
            raise ValueError("in_flight must be at least 1")


@dataclass(frozen=True, slots=True)
class Manifest:
    level: int
    length: int
    chunk_size: int
    children: tuple[NodeId, ...]


@dataclass(frozen=True, slots=True)
class BlobTree:
    """A value cut for storage: the root manifest (the user's record value) and every other
    piece (chunks and inner manifests) as (key, bytes), chunks first, in value order."""

    root: bytes
    pieces: tuple[tuple[NodeId, bytes], ...]
    length: int


def is_manifest(value: bytes) -> bool:
    """Whether a record's value is a root manifest rather than the value itself."""
    return value.startswith(MAGIC)


def needs_blob(value: bytes, inline_limit: int) -> bool:
    """Whether ``value`` must be stored as a tree (too large, or mistakable for a manifest)."""
    return len(value) > inline_limit or is_manifest(value)


def piece_key(data: bytes) -> NodeId:
    return NodeId(int.from_bytes(hashlib.sha256(data).digest(), "big"))


def encode_manifest(level: int, length: int, chunk_size: int, hashes: bytes) -> bytes:
    body = [FORMAT_VERSION, level, length, chunk_size, hashes]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return MAGIC + packed


def fanout(capacity: int) -> int:
    """How many children a manifest of at most ``capacity`` bytes lists (widest fields)."""
    n = capacity // HASH_BYTES
    while n > 1:
        size = len(encode_manifest(MAX_DEPTH, _MAX_LENGTH_FIELD, 65535, b"\0" * HASH_BYTES * n))
        if size <= capacity:
            return n
        n -= 1
    raise AssertionError("a manifest must list at least two children")  # pragma: no cover


INNER_FANOUT = fanout(IMMUTABLE_VALUE_LIMIT)
"""Children of an inner manifest (itself an immutable record)."""


def build_tree(value: bytes, root_capacity: int, config: BlobConfig) -> BlobTree:
    """Cut ``value`` into chunks and manifests; the root fits ``root_capacity`` bytes.

    Raises :class:`ValueTooLargeError` for a value over ``config.max_size``.
    """
    total = len(value)
    if total > config.max_size:
        raise ValueTooLargeError(
            f"value of {total} bytes is over the limit of {config.max_size} bytes"
        )
    if total == 0:
        raise ValidationError("an empty value is stored inline, never as a blob")
    size = config.chunk_size
    pieces: list[tuple[NodeId, bytes]] = []
    # (key bytes, length covered) per node of the current level
    level_nodes: list[tuple[bytes, int]] = []
    for start in range(0, total, size):
        chunk = value[start : start + size]
        digest = hashlib.sha256(chunk).digest()
        pieces.append((NodeId(int.from_bytes(digest, "big")), chunk))
        level_nodes.append((digest, len(chunk)))
    root_fanout = fanout(root_capacity)
    level = 0
    while len(level_nodes) > root_fanout:
        if level + 1 >= MAX_DEPTH:  # pragma: no cover - needs a value of ~10^12 bytes
            raise ValueTooLargeError("value needs more manifest levels than a reader follows")
        parents: list[tuple[bytes, int]] = []
        for i in range(0, len(level_nodes), INNER_FANOUT):
            group = level_nodes[i : i + INNER_FANOUT]
            length = sum(n for _, n in group)
            data = encode_manifest(level, length, size, b"".join(h for h, _ in group))
            digest = hashlib.sha256(data).digest()
            pieces.append((NodeId(int.from_bytes(digest, "big")), data))
            parents.append((digest, length))
        level_nodes = parents
        level += 1
    root = encode_manifest(level, total, size, b"".join(h for h, _ in level_nodes))
    assert len(root) <= root_capacity
    return BlobTree(root, tuple(pieces), total)


def decode_manifest(data: bytes, max_size: int) -> Manifest:
    """Decode one manifest strictly; raise :class:`BlobFormatError` on anything else.

    ``max_size`` is the reader's limit: a manifest claiming more is refused at once.
    """
    if not data.startswith(MAGIC):
        raise BlobFormatError("not a manifest")
    if len(data) > IMMUTABLE_VALUE_LIMIT:
        raise BlobFormatError(f"manifest of {len(data)} bytes is too large")
    try:
        body: Any = msgpack.unpackb(
            data[len(MAGIC) :],
            raw=False,
            strict_map_key=True,
            max_array_len=8,
            max_map_len=0,
            max_str_len=0,
            max_bin_len=IMMUTABLE_VALUE_LIMIT,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types for malformed input
        raise BlobFormatError(f"malformed manifest: {exc}") from None
    if not (isinstance(body, list) and len(body) == 5):
        raise BlobFormatError("a manifest is a list of 5 fields")
    version, level, length, chunk_size, hashes = body
    for name, field in (("level", level), ("length", length), ("chunk size", chunk_size)):
        if type(field) is not int:
            raise BlobFormatError(f"manifest {name} is not an integer")
    if version != FORMAT_VERSION or type(version) is not int:
        raise BlobFormatError(f"unknown manifest version {version!r}")
    if not 0 <= level < MAX_DEPTH:
        raise BlobFormatError(f"manifest nests too deep (level {level}, at most {MAX_DEPTH - 1})")
    if length > max_size:
        raise BlobFormatError(f"manifest claims {length} bytes, over the limit of {max_size} bytes")
    if length < 1:
        raise BlobFormatError("manifest claims an empty value")
    if not _MIN_CHUNK <= chunk_size <= IMMUTABLE_VALUE_LIMIT:
        raise BlobFormatError(f"manifest chunk size {chunk_size} out of range")
    if not isinstance(hashes, bytes) or not hashes or len(hashes) % HASH_BYTES:
        raise BlobFormatError("manifest children are not a list of 32-byte keys")
    count = len(hashes) // HASH_BYTES
    expected = -(-length // subtree_capacity(level, chunk_size))
    if count != expected:
        raise BlobFormatError(
            f"manifest of level {level} lists {count} children for {length} bytes "
            f"(expected {expected})"
        )
    children = tuple(
        NodeId(int.from_bytes(hashes[i : i + HASH_BYTES], "big"))
        for i in range(0, len(hashes), HASH_BYTES)
    )
    return Manifest(level, length, chunk_size, children)


def subtree_capacity(level: int, chunk_size: int) -> int:
    """Bytes each child of a level-``level`` manifest covers (all but the last exactly)."""
    capacity: int = chunk_size * INNER_FANOUT**level
    return capacity


def child_lengths(manifest: Manifest) -> list[int]:
    """The exact number of value bytes under each child of ``manifest`` (the tree is
    canonical, so a reader knows every piece's size before fetching it)."""
    full = subtree_capacity(manifest.level, manifest.chunk_size)
    count = len(manifest.children)
    return [full] * (count - 1) + [manifest.length - full * (count - 1)]


def check_chunk(data: bytes, key: NodeId, expected_length: int) -> None:
    """A data chunk must hash to its key and have exactly the size its manifest implies."""
    if piece_key(data) != key:
        raise BlobFormatError("chunk does not match its hash")
    if len(data) != expected_length:
        raise BlobFormatError(
            f"chunk of {len(data)} bytes where its manifest implies {expected_length}"
        )


def check_child_manifest(child: Manifest, parent: Manifest, expected_length: int) -> None:
    """A manifest under another: one level lower, the same chunk size, the exact length."""
    if child.level != parent.level - 1:
        raise BlobFormatError(f"manifest of level {child.level} under one of level {parent.level}")
    if child.chunk_size != parent.chunk_size:
        raise BlobFormatError("manifests of one value disagree on the chunk size")
    if child.length != expected_length:
        raise BlobFormatError(
            f"manifest claims {child.length} bytes where its parent implies {expected_length}"
        )
