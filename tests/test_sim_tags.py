"""The simulator's stand-in tags: a keyed BLAKE2b of the sender's key and the payload."""

from __future__ import annotations

import hashlib
import random

from nautilus_kad.core.identity import SIGNATURE_BYTES, Identity
from nautilus_kad.sim import SimAuthenticator, SimKeyring
from nautilus_kad.sim.auth import TAGS_KEPT


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


def test_remembered_tags_give_the_answer_hashing_gives() -> None:
    """A receiver finds the tag its sender made (and compares bytes instead of hashing):
    the verdict is the one hashing gives, for unaltered, altered and re-sent datagrams,
    and after the memory of tags was cleared."""
    rng = random.Random(5)
    keyring = SimKeyring(rng.randbytes(32))
    alice = SimAuthenticator(Identity.generate(rng), keyring)
    bob = SimAuthenticator(Identity.generate(rng), keyring)
    key = alice.identity.public_key
    payload = rng.randbytes(300)
    tag = alice.sign(payload)
    assert keyring.tags[tag] == (key, payload)
    assert bob.verify(key, payload, tag) == alice.identity.node_id
    assert tag not in keyring.tags  # checked once: a copy of the datagram is hashed
    assert bob.verify(key, payload, tag) == alice.identity.node_id
    # A remembered tag on other bytes, or claimed by another key, fails as hashing fails.
    tag = alice.sign(payload)
    assert bob.verify(key, payload[:-1] + b"\0", tag) is None
    tag = alice.sign(payload)
    assert bob.verify(bob.identity.public_key, payload, tag) is None
    # Full: cleared, and every tag still verifies (by hashing).
    made = [(p, alice.sign(p)) for p in (rng.randbytes(40) for _ in range(TAGS_KEPT + 10))]
    assert len(keyring.tags) <= TAGS_KEPT
    for p, t in made[:20] + made[-20:]:
        assert bob.verify(key, p, t) == alice.identity.node_id
        assert bob.verify(key, p + b"x", t) is None
