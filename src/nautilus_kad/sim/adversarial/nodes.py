"""Hostile nodes for the simulator: the real engine with a hostile behaviour layer.

A hostile node is a :class:`~nautilus_kad.core.engine.KadEngine` that joined like any other
(so honest nodes hold it in their routing tables) and then turns: :func:`turn_hostile` swaps
its class for :class:`HostileEngine`, which overrides exactly one decision of the engine and
leaves the rest (decoding, signing with the node's own key, sessions, timers) to the engine's
own code; :func:`turn_honest` swaps it back. Honest nodes are never touched: they run the
unmodified engine.

Behaviours (:mod:`.answers` makes the answers):

* the answering ones (``misroute``, ``scatter``, ``forge``, ``scatter-forge``) answer every
  FIND_NODE and FIND_VALUE with the contacts :class:`~.answers.Conspiracy` chooses, and never
  with a value (the node's store is swapped for one that keeps nothing, while it still
  acknowledges STOREs);
* ``silent`` — after joining, the node drops every datagram it receives and sends nothing.
* Sybils — :func:`sybil_identity` makes an identity whose id lies next to a chosen key; the
  node joins normally, then behaves as one of the above.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ...core.engine import KadEngine
from ...core.identity import Identity
from ...core.ids import ID_BITS, NodeId
from ...core.messages import Address, Contact
from ...core.records import Record
from ...core.storage import RecordStore, StoredRecord
from ..simulation import SimNode
from .answers import ANSWERING, BEHAVIOURS, MISROUTE, SILENT, Conspiracy

__all__ = [
    "BEHAVIOURS",
    "MISROUTE",
    "SILENT",
    "Colluders",
    "HostileEngine",
    "colluders_of",
    "is_hostile",
    "sybil_identity",
    "turn_honest",
    "turn_hostile",
]

Colluders = Conspiracy
"""The colluders' shared state (the name the scenario and tests use)."""


class _NoStore:
    """A store that keeps nothing: a hostile node acknowledges STOREs and serves no value."""

    def get(self, key: NodeId, now: float) -> StoredRecord | None:
        return None

    def put(self, record: Record, now: float, expires_at: float) -> None:
        pass

    def remove(self, key: NodeId) -> bool:
        return False

    def expire(self, now: float) -> list[NodeId]:
        return []

    def keys(self) -> Iterator[NodeId]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass


class HostileEngine(KadEngine):
    """The engine of a node that turned hostile (see :func:`turn_hostile`).

    Only the behaviour differs; its datagrams are still encoded by the engine's codec and
    signed (or sealed in a session) with the node's own key, so honest nodes accept them.
    """

    behaviour: str = MISROUTE
    colluders: Colluders
    honest_store: RecordStore

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        if self.behaviour == SILENT:
            self.stats["adversary.dropped"] += 1
            return
        super().receive_datagram(data, address, now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out = super().datagrams_to_send()
        if self.behaviour == SILENT:
            self.stats["adversary.unsent"] += len(out)
            return []
        return out

    def _closest_for(self, target: NodeId, requester: NodeId) -> tuple[Contact, ...]:
        # The one decision an answering behaviour changes: whom it names as closest.
        if self.behaviour in ANSWERING:
            self.stats["adversary.misrouted"] += 1
            return self.colluders.answer(self.behaviour, target, requester, self.node_id)
        return super()._closest_for(target, requester)


def turn_hostile(node: SimNode, behaviour: str, colluders: Colluders) -> None:
    """Make a (joined) node hostile from now on; it joins ``colluders``."""
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; choose from {BEHAVIOURS}")
    engine = node.engine
    if not isinstance(engine, HostileEngine):
        engine.__class__ = HostileEngine
        assert isinstance(engine, HostileEngine)
        engine.honest_store = engine.store
        engine.store = _NoStore()
    engine.behaviour = behaviour
    engine.colluders = colluders
    colluders.add(node.node_id, node.address)


def turn_honest(node: SimNode) -> None:
    """Undo :func:`turn_hostile`: the node runs the plain engine again."""
    engine = node.engine
    if isinstance(engine, HostileEngine):
        engine.colluders.discard(node.node_id)
        engine.store = engine.honest_store
        engine.__class__ = KadEngine  # type: ignore[assignment]  # back to the plain engine


def is_hostile(node: SimNode) -> bool:
    return isinstance(node.engine, HostileEngine)


def sybil_identity(target: NodeId, prefix_bits: int, rng: random.Random) -> Identity:
    """An identity whose id shares its first ``prefix_bits`` bits with ``target``.

    A real attacker grinds about ``2**prefix_bits`` key pairs to get one (NodeId =
    SHA-256(public key)): at 10 000 nodes, 20 bits put a Sybil nearer a key than every honest
    node, about a million Ed25519 key generations, a minute of one core. The simulator skips
    the grinding: its stand-in authenticator (:class:`~.auth.SimAuthenticator`) learns each
    node's id from the identity it was built with, so the Sybil's key is real and its id is
    set. (Under ``real_crypto`` the id would not match the key, and peers would drop it.)
    """
    if not 0 <= prefix_bits <= ID_BITS:
        raise ValueError("prefix_bits must lie in 0..256")
    identity = Identity(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))
    low = ID_BITS - prefix_bits
    mask = (1 << low) - 1
    identity.node_id = NodeId((target & ~mask) | (rng.getrandbits(low) if low else 0))
    return identity


def colluders_of(nodes: Iterable[SimNode]) -> list[SimNode]:
    """The hostile ones among ``nodes``."""
    return [n for n in nodes if is_hostile(n)]
