"""Write tokens: the precomputed HMAC states give exactly HMAC-SHA256(secret, IP)[:8]."""

from __future__ import annotations

import hmac
import random

from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.fields import pack_ip
from nautilus_kad.core.identity import Identity


def test_issued_tokens_are_the_hmac_of_the_requester_ip_before_and_after_rotation() -> None:
    rng = random.Random(7)
    engine = KadEngine(Identity.generate(rng), rng=rng, now=0.0)
    tokens = engine.tokens
    addresses = [
        ("203.0.113.5", 4000),
        ("203.0.113.6", 4000),
        ("2001:db8::1", 9),
        ("203.0.113.5", 1),
    ]
    for rotation in range(3):
        secret = tokens._secret
        for address in addresses:
            expected = hmac.digest(secret, pack_ip(address[0]), "sha256")[:8]
            assert tokens.issue(address) == expected
            assert tokens.valid(expected, address)
        old = [tokens.issue(a) for a in addresses]
        tokens.rotate(float(rotation + 1))
        # one rotation later the old tokens still pass (previous secret), new ones differ
        assert all(tokens.valid(t, a) for t, a in zip(old, addresses, strict=True))
        assert all(tokens.issue(a) != t for t, a in zip(old, addresses, strict=True))
    assert not tokens.valid(b"\0" * 8, addresses[0])
