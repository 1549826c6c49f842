"""A cheap datagram authenticator for simulations (NOT a security mechanism).

Real Ed25519 costs tens of microseconds per signature and per verification, which would make
a 10 000-node simulation spend most of its time in cryptography. :class:`SimAuthenticator`
keeps the codec's framing and verification path exactly as it is (the 64-byte tag is appended
to and checked against the exact payload bytes, the sender's NodeId is still SHA-256 of its
public key) but computes the tag as a keyed BLAKE2b hash of the sender's public key and the
payload, with one key shared by every node of the simulation.

Session handshakes (core/session.py) get the same treatment: :meth:`SimAuthenticator.agree`
replaces X25519 with a keyed hash of both ephemeral public values; the per-datagram
ChaCha20-Poly1305 of established sessions is the engine's own and stays real.

Anyone who knows that shared key can forge any node's datagrams, so this is only a stand-in
that lets the simulator run the engine unchanged at scale. ``--real-crypto`` runs the engine's
own Ed25519 :class:`~nautilus_kad.core.auth.Authenticator` instead, and the benchmarks measure
what that costs.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from ..core.auth import Authenticator
from ..core.fields import ContactMemo
from ..core.identity import SIGNATURE_BYTES, Identity, node_id_for
from ..core.ids import NodeId


class SimKeyring:
    """What all simulated nodes share: the tag key, a cache of public key → NodeId and the
    codec's memo of contact lists (core/fields.py).

    Both caches hold pure functions' results (contacts are immutable), so sharing them
    between nodes changes no behaviour; they only save every node from hashing every peer's
    key, and decoding and encoding every contact, again. Real nodes share nothing.
    """

    __slots__ = ("contacts", "ids", "key", "tagger")

    def __init__(self, key: bytes) -> None:
        if not 16 <= len(key) <= 64:
            raise ValueError("the simulation tag key must be 16 to 64 bytes")
        self.key = key
        self.tagger = hashlib.blake2b(digest_size=SIGNATURE_BYTES, key=key)
        """The keyed hash with nothing fed yet: each tag starts from a copy of it, which
        costs half of building a keyed BLAKE2b afresh (same bytes out)."""
        self.ids: dict[bytes, NodeId] = {}
        self.contacts = ContactMemo()


class SimAuthenticator(Authenticator):
    """Tags datagrams with ``BLAKE2b-512(key=shared, sender public key ‖ payload)``.

    A stand-in for Ed25519 inside the simulator only: it proves nothing about who sent a
    datagram to anyone who knows the simulation's shared key.
    """

    __slots__ = ("_keyring", "_prefix")

    def __init__(self, identity: Identity, keyring: SimKeyring) -> None:
        super().__init__(identity, cache_size=0)
        self.contacts = keyring.contacts
        self._keyring = keyring
        self._prefix = identity.public_key
        keyring.ids.setdefault(identity.public_key, identity.node_id)

    def sign(self, payload: bytes) -> bytes:
        tag = self._keyring.tagger.copy()
        tag.update(self._prefix)
        tag.update(payload)
        return tag.digest()

    def verify(self, public_key: bytes, payload: bytes, signature: bytes) -> NodeId | None:
        keyring = self._keyring
        tag = keyring.tagger.copy()
        tag.update(public_key)
        tag.update(payload)
        if signature != tag.digest():
            return None
        node_id = keyring.ids.get(public_key)
        if node_id is None:
            node_id = keyring.ids[public_key] = node_id_for(public_key)
        return node_id

    # --- session handshakes: a stand-in for X25519 ----------------------------------------

    def new_ephemeral(self, rng: random.Random) -> tuple[Any, bytes]:
        """A stand-in ephemeral key pair: 32 random bytes and their keyed hash."""
        private = rng.randbytes(32)
        return private, self._ephemeral_public(private)

    def agree(self, private: Any, peer_public: bytes) -> bytes | None:
        """A stand-in shared secret: both sides hash the two public values in the same
        order, so they agree; anyone holding the simulation key could too."""
        if len(peer_public) != _EPHEMERAL_BYTES:
            return None
        own = self._ephemeral_public(private)
        low, high = (own, peer_public) if own <= peer_public else (peer_public, own)
        return hashlib.blake2b(
            low + high, digest_size=32, key=self._keyring.key, person=b"sim-agree"
        ).digest()

    def _ephemeral_public(self, private: bytes) -> bytes:
        return hashlib.blake2b(
            private, digest_size=_EPHEMERAL_BYTES, key=self._keyring.key, person=b"sim-ephem"
        ).digest()


_EPHEMERAL_BYTES = 32
