"""A node's Ed25519 key pair and the NodeId derived from it.

The NodeId is SHA-256 of the raw 32-byte public key, so nobody can claim an id without holding
its key (S/Kademlia's first defence against id spoofing). The key file is a PKCS#8 PEM written
with mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign

from .errors import KadError
from .ids import NodeId

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def node_id_for(public_key: bytes) -> NodeId:
    """The NodeId that belongs to a raw Ed25519 public key."""
    return NodeId(int.from_bytes(hashlib.sha256(public_key).digest(), "big"))


class Identity:
    """An Ed25519 key pair plus the derived NodeId."""

    __slots__ = ("_private", "_secret", "node_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: bytes = private_key.public_key().public_bytes_raw()
        self.node_id: NodeId = node_id_for(self.public_key)
        self._secret = private_key.private_bytes_raw() + self.public_key
        """libsodium's form of the key (seed ‖ public key): it signs in about two thirds of
        OpenSSL's time here, and Ed25519 signatures are deterministic, so the bytes are the
        same."""

    @classmethod
    def generate(cls, rng: random.Random | None = None) -> Identity:
        """A fresh identity; from ``rng`` when given (reproducible simulations), else from
        the operating system's CSPRNG."""
        if rng is None:
            return cls(Ed25519PrivateKey.generate())
        return cls(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``data``."""
        return crypto_sign(data, self._secret)[:SIGNATURE_BYTES]

    def private_bytes(self) -> bytes:
        """The raw 32-byte private seed (for storage; handle with care)."""
        return self._private.private_bytes_raw()

    def save(self, path: Path) -> None:
        """Write the key as PKCS#8 PEM, readable by the owner only (mode 0600)."""
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key written by :meth:`save`."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise KadError(f"cannot read key file {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KadError(f"key file {path} does not hold an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """The identity stored at ``path``, created there on first use."""
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    def __repr__(self) -> str:
        return f"Identity({self.node_id.short()}…)"
