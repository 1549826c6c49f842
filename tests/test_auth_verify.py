"""Ed25519 checks through libsodium (``auth.ed25519_valid``): what it accepts and refuses."""

from __future__ import annotations

import random

from nautilus_kad.core.auth import Authenticator, ed25519_valid, verify_signature
from nautilus_kad.core.identity import Identity

SIGNER = Identity.generate(random.Random(5))
MESSAGE = b"a datagram's exact bytes" * 10


def test_a_valid_signature_passes_and_any_change_fails() -> None:
    signature = SIGNER.sign(MESSAGE)
    assert ed25519_valid(SIGNER.public_key, MESSAGE, signature)
    assert verify_signature(SIGNER.public_key, MESSAGE, signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not ed25519_valid(SIGNER.public_key, MESSAGE, flipped)
    assert not ed25519_valid(SIGNER.public_key, MESSAGE + b"x", signature)
    other = Identity.generate(random.Random(6))
    assert not ed25519_valid(other.public_key, MESSAGE, signature)


def test_malformed_keys_and_signatures_are_simply_invalid() -> None:
    signature = SIGNER.sign(MESSAGE)
    for key in (b"", SIGNER.public_key[:31], SIGNER.public_key + b"\0", bytes(32)):
        assert not ed25519_valid(key, MESSAGE, signature), key
    for bad in (b"", signature[:63], signature + b"\0", bytes(64)):
        assert not ed25519_valid(SIGNER.public_key, MESSAGE, bad)
    # A small-order public key (the identity point) verifies nothing, whatever the signature.
    identity_point = b"\x01" + bytes(31)
    assert not ed25519_valid(identity_point, MESSAGE, bytes(32) + bytes(32))


def test_verify_returns_the_sender_id_and_keeps_a_bounded_cache() -> None:
    auth = Authenticator(SIGNER, cache_size=2)
    signers = [Identity.generate(random.Random(10 + i)) for i in range(3)]
    for who in signers:
        assert auth.verify(who.public_key, MESSAGE, who.sign(MESSAGE)) == who.node_id
    assert len(auth._cache) == 2
    assert auth.verify(signers[0].public_key, MESSAGE, bytes(64)) is None


def test_signatures_are_those_of_the_standard_ed25519() -> None:
    """Signing goes through libsodium; the bytes are OpenSSL's (Ed25519 is deterministic)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.from_private_bytes(SIGNER.private_bytes())
    for size in (0, 1, 300, 1200):
        data = bytes(range(256)) * 5
        assert SIGNER.sign(data[:size]) == key.sign(data[:size])
