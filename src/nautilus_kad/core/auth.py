"""Datagram authentication primitives: the one place that signs, verifies and agrees keys.

First contact and handshakes use Ed25519 signatures over a datagram's exact bytes; peers that
talk repeatedly then agree on session keys with ephemeral X25519 (:mod:`.session` holds the
session state and the per-datagram AEAD built on :meth:`Authenticator.agree`). Signed records
are checked with :func:`verify_signature`. A simulator may subclass :class:`Authenticator` to
replace the public-key operations with cheap stand-ins.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from .identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, node_id_for
from .ids import NodeId
from .replay import ReplayFilter

__all__ = ["Authenticator", "ReplayFilter", "ed25519_valid", "verify_signature"]

if TYPE_CHECKING:
    from .fields import ContactMemo


def ed25519_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``.

    Checked with libsodium, which verifies in about half the time OpenSSL's Ed25519 takes
    here (the signature check is the largest single cost of a signed datagram) and is the
    stricter of the two: it also refuses small-order public keys and non-canonical
    signatures, which no honest signer produces. Signing stays with ``cryptography``:
    both produce the same (deterministic) signatures.
    """
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False  # libsodium reads exactly 32 key bytes: never hand it fewer
    try:
        crypto_sign_open(signature + message, public_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message`` (used for
    signed records; any malformed key or signature is simply invalid)."""
    return ed25519_valid(public_key, message, signature)


class Authenticator:
    """Signs our datagrams and verifies peers', caching the node ids of the most recent
    peer keys that signed validly (bounded LRU)."""

    __slots__ = ("_cache", "_cache_size", "contacts", "identity", "known")

    def __init__(self, identity: Identity, cache_size: int = 4096) -> None:
        self.identity = identity
        self._cache_size = cache_size
        self._cache: dict[bytes, NodeId] = {}
        self.contacts: ContactMemo | None = None
        """The codec's memo of contact lists (core/fields.py), or None: each node builds its
        own contacts (the default; the simulator shares one memo between its nodes)."""
        self.known: Callable[[NodeId], NodeId] | None = None
        """The node's own copy of an id it already holds (its routing table's), so the
        routing table, the sessions, the write tokens and the peers' records of one peer
        share one 256-bit int instead of one each (set by the engine)."""

    def sign(self, payload: bytes) -> bytes:
        return self.identity.sign(payload)

    def verify(self, public_key: bytes, payload: bytes, signature: bytes) -> NodeId | None:
        """The sender's NodeId if ``signature`` is valid for ``payload``, else ``None``."""
        if not ed25519_valid(public_key, payload, signature):
            return None
        # Only keys that produced a valid signature earn a cache slot, so garbage cannot
        # flush the cache.
        cache = self._cache
        node_id = cache.pop(public_key, None)
        if node_id is None:
            node_id = node_id_for(public_key)
            if self.known is not None:
                node_id = self.known(node_id)
        cache[public_key] = node_id
        if len(cache) > self._cache_size:
            del cache[next(iter(cache))]
        return node_id

    # --- ephemeral key agreement (session handshakes) ---------------------------------------

    def new_ephemeral(self, rng: random.Random) -> tuple[Any, bytes]:
        """A fresh X25519 key pair drawn from ``rng``: (private key, 32-byte public key)."""
        private = X25519PrivateKey.from_private_bytes(rng.randbytes(32))
        return private, private.public_key().public_bytes_raw()

    def agree(self, private: Any, peer_public: bytes) -> bytes | None:
        """The X25519 shared secret, or None for a key that yields none (low-order points)."""
        try:
            return bytes(private.exchange(X25519PublicKey.from_public_bytes(peer_public)))
        except ValueError:
            return None
