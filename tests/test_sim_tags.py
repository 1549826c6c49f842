"""The simulator's stand-in tags: a keyed BLAKE2b of the sender's key and the payload."""

from __future__ import annotations

import hashlib
import random

from nautilus_kad.core.identity import SIGNATURE_BYTES, Identity
from nautilus_kad.sim import SimAuthenticator, SimKeyring


def test_tags_are_the_keyed_blake2b_and_verify_only_unaltered() -> None:
    rng = random.Random(3)
    keyring = SimKeyring(rng.randbytes(32))
    alice = SimAuthenticator(Identity.generate(rng), keyring)
    bob = SimAuthenticator(Identity.generate(rng), keyring)
    for size in (0, 1, 127, 128, 129, 700, 1200):
        payload = rng.randbytes(size)
        tag = alice.sign(payload)
        key = alice.identity.public_key
        expected = hashlib.blake2b(key + payload, digest_size=SIGNATURE_BYTES, key=keyring.key)
        assert tag == expected.digest()
        assert bob.verify(key, payload, tag) == alice.identity.node_id
        assert bob.verify(key, payload + b"x", tag) is None
        assert bob.verify(bob.identity.public_key, payload, tag) is None
        assert alice.sign(payload) == tag  # the shared starting state is never consumed
