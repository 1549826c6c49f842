"""256-bit identifiers and the XOR metric.

A :class:`NodeId` is an ``int`` subclass: XOR, comparison and hashing run at C speed, which
matters because every routing decision is a handful of XORs. Keys of stored values live in the
same space, so the same type serves both.
"""

from __future__ import annotations

import hashlib
import random

ID_BITS = 256
ID_BYTES = ID_BITS // 8
_MAX = (1 << ID_BITS) - 1


class NodeId(int):
    """A point in the 256-bit Kademlia key space."""

    __slots__ = ()

    def __new__(cls, value: int) -> NodeId:
        if not 0 <= value <= _MAX:
            raise ValueError("a NodeId is a 256-bit unsigned integer")
        return super().__new__(cls, value)

    @classmethod
    def from_bytes_exact(cls, data: bytes) -> NodeId:
        """Decode exactly 32 big-endian bytes (the wire form)."""
        if len(data) != ID_BYTES:
            raise ValueError(f"a NodeId is {ID_BYTES} bytes, got {len(data)}")
        return cls(int.from_bytes(data, "big"))

    @classmethod
    def from_hex(cls, text: str) -> NodeId:
        """Parse the 64-hex-digit form printed by :meth:`hex`."""
        raw = bytes.fromhex(text)
        return cls.from_bytes_exact(raw)

    @classmethod
    def random(cls, rng: random.Random) -> NodeId:
        """A uniformly random id drawn from the injected generator."""
        return cls(rng.getrandbits(ID_BITS))

    def to_bytes32(self) -> bytes:
        """The 32-byte big-endian wire form."""
        return int.to_bytes(self, ID_BYTES, "big")

    def hex(self) -> str:
        return format(int(self), "064x")

    def short(self) -> str:
        """The first 8 hex digits: enough to tell nodes apart in logs and tables."""
        return self.hex()[:8]

    def __repr__(self) -> str:
        return f"NodeId({self.short()}…)"

    def __str__(self) -> str:
        return self.hex()


def distance(a: int, b: int) -> int:
    """The XOR distance between two ids."""
    return a ^ b


def common_prefix_length(a: int, b: int) -> int:
    """How many leading bits ``a`` and ``b`` share (256 when equal)."""
    return ID_BITS - (a ^ b).bit_length()


def bucket_index(own: int, other: int) -> int:
    """The k-bucket that ``other`` belongs to in ``own``'s table: the shared-prefix length.

    Bucket 0 holds the half of the space farthest from us, bucket 255 the single id that
    differs only in the last bit. Our own id has no bucket.
    """
    if own == other:
        raise ValueError("a node has no bucket for its own id")
    return ID_BITS - (own ^ other).bit_length()


def random_id_in_bucket(own: int, index: int, rng: random.Random) -> NodeId:
    """A random id that shares exactly ``index`` leading bits with ``own``.

    Used to refresh a bucket: a lookup for such an id walks exactly that part of the space.
    """
    if not 0 <= index < ID_BITS:
        raise ValueError("bucket index out of range")
    flip_bit = ID_BITS - 1 - index
    prefix_mask = _MAX ^ ((1 << (flip_bit + 1)) - 1)
    suffix = rng.getrandbits(flip_bit) if flip_bit else 0
    return NodeId((own & prefix_mask) | ((~own) & (1 << flip_bit)) | suffix)


def key_id(key: bytes) -> NodeId:
    """Map an application key of any length into the id space (SHA-256)."""
    return NodeId(int.from_bytes(hashlib.sha256(key).digest(), "big"))
