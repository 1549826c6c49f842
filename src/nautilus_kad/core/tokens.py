"""Write tokens (BEP 5), both ways.

A FIND_NODE or FIND_VALUE answer carries ``token = HMAC(secret, requester IP)``; a STORE must
present a token under the current or the previous secret, so only a requester that receives
datagrams at its source address can write (a forged source never sees the token). The secret
rotates every ``token_rotation`` seconds.

The other direction: the last token each peer gave us, reused for replication STOREs while it
is surely still valid at its issuer (``TOKEN_REUSE`` of a rotation period).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .context import NodeContext
from .fields import pack_ip
from .ids import NodeId
from .messages import Address

TOKEN_BYTES = 8
TOKEN_REUSE = 0.9
"""A peer's write token is reused for this fraction of ``token_rotation`` after it arrived (a
token stays valid for one to two rotation periods at its issuer)."""


class WriteTokens:
    """The tokens we issue (a rotating HMAC secret) and the ones peers issued to us."""

    __slots__ = ("_ctx", "_keyed", "_last", "_previous", "_secret", "from_peers", "next_rotation")

    def __init__(self, ctx: NodeContext, now: float) -> None:
        self._ctx = ctx
        self._secret = ctx.rng.randbytes(16)
        self._keyed = _keyed(self._secret)
        self._previous = self._secret
        self._last = ("", b"")
        """(requester IP, its token under the current secret) of the last FIND_* answer."""
        self.next_rotation = now + ctx.config.token_rotation
        self.from_peers: dict[NodeId, bytes] = {}
        """The last write token each peer gave us, followed by when (8 bytes, a double): one
        bytes object per peer instead of a tuple, the token and a float (about 70 bytes
        less each, in every node, for every peer that answered a FIND)."""

    # --- the tokens we issue -----------------------------------------------------------

    def issue(self, address: Address) -> bytes:
        """The token for ``address`` under the current secret."""
        # Every FIND_* answer carries one, and a requester often asks several in a row:
        # remember the last one (no more, a table per requester would cost memory).
        last_ip, token = self._last
        if last_ip != address[0]:
            inner, outer = self._keyed
            inner = inner.copy()
            inner.update(pack_ip(address[0]))
            outer = outer.copy()
            outer.update(inner.digest())
            token = outer.digest()[:TOKEN_BYTES]  # = _token(self._secret, address)
            self._last = (address[0], token)
        return token

    def valid(self, token: bytes, address: Address) -> bool:
        """Whether a STORE from ``address`` presents a current or previous token."""
        if len(token) != TOKEN_BYTES:
            return False
        return hmac.compare_digest(token, self.issue(address)) or hmac.compare_digest(
            token, _token(self._previous, address)
        )

    def rotate(self, now: float) -> None:
        """A new secret (the current one stays valid one more period); forget stale tokens
        of peers."""
        self._previous = self._secret
        self._secret = self._ctx.rng.randbytes(16)
        self._keyed = _keyed(self._secret)
        self._last = ("", b"")
        rotation = self._ctx.config.token_rotation
        self.next_rotation = now + rotation
        horizon = TOKEN_REUSE * rotation
        peers = self.from_peers
        stale = [nid for nid, entry in peers.items() if now - _when(entry) > horizon]
        for node_id in stale:
            del peers[node_id]

    # --- the tokens peers issued to us -------------------------------------------------

    def remember(self, node_id: NodeId, token: bytes, now: float) -> None:
        self.from_peers[node_id] = token + _WHEN.pack(now)

    def last(self, node_id: NodeId) -> tuple[bytes, float] | None:
        """The last token ``node_id`` gave us and when, fresh or not."""
        entry = self.from_peers.get(node_id)
        return None if entry is None else (entry[:-_WHEN_BYTES], _when(entry))

    def forget(self, node_id: NodeId) -> None:
        self.from_peers.pop(node_id, None)

    def fresh(self, node_id: NodeId, now: float) -> bytes | None:
        """The peer's token if it is recent enough to be accepted, else None."""
        entry = self.from_peers.get(node_id)
        if entry is None or now - _when(entry) > TOKEN_REUSE * self._ctx.config.token_rotation:
            return None
        return entry[:-_WHEN_BYTES]


_WHEN = struct.Struct("<d")
_WHEN_BYTES = _WHEN.size


def _when(entry: bytes) -> float:
    """When the token in ``entry`` (of :attr:`WriteTokens.from_peers`) arrived."""
    return float(_WHEN.unpack_from(entry, len(entry) - _WHEN_BYTES)[0])


def _token(secret: bytes, address: Address) -> bytes:
    return hmac.digest(secret, pack_ip(address[0]), "sha256")[:TOKEN_BYTES]


def _keyed(secret: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """HMAC-SHA256's inner and outer hashes with ``secret``'s pads already fed (RFC 2104):
    a token is then two copies, two updates and two digests, less than half the cost of
    :func:`hmac.digest`, which sets the key up again for every token. Same bytes out."""
    block = secret.ljust(64, b"\0")  # a 16-byte secret is shorter than SHA-256's block
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )
