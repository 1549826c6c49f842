"""Datagram authentication: the one place that signs and verifies.

Today every datagram carries an Ed25519 signature over its exact bytes. Keeping both directions
here lets a later session-key scheme (X25519 agreement, then a MAC per datagram) replace it
without touching the codec's framing or the engine.
"""

from __future__ import annotations

from collections import OrderedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .identity import SIGNATURE_BYTES, Identity, node_id_for
from .ids import NodeId


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message`` (used for
    signed records; any malformed key or signature is simply invalid)."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


class Authenticator:
    """Signs our datagrams and verifies peers', caching decoded peer keys (bounded LRU)."""

    __slots__ = ("_cache", "_cache_size", "identity")

    def __init__(self, identity: Identity, cache_size: int = 4096) -> None:
        self.identity = identity
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[Ed25519PublicKey, NodeId]] = OrderedDict()

    def sign(self, payload: bytes) -> bytes:
        return self.identity.sign(payload)

    def verify(self, public_key: bytes, payload: bytes, signature: bytes) -> NodeId | None:
        """The sender's NodeId if ``signature`` is valid for ``payload``, else ``None``."""
        if len(signature) != SIGNATURE_BYTES:
            return None
        entry = self._cache.get(public_key)
        if entry is None:
            try:
                key = Ed25519PublicKey.from_public_bytes(public_key)
            except ValueError:
                return None
            entry = (key, node_id_for(public_key))
        try:
            entry[0].verify(signature, payload)
        except InvalidSignature:
            return None
        # Only keys that produced a valid signature earn a cache slot, so garbage cannot
        # flush the cache.
        self._cache[public_key] = entry
        self._cache.move_to_end(public_key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry[1]
