"""What hostile nodes answer: the behaviours of the simulator's adversary.

A hostile node changes one decision of the engine, whom it names as the nodes closest to a
target (:meth:`~nautilus_kad.core.engine.KadEngine._closest_for`), and :class:`Conspiracy`
makes that answer. The colluders share everything they know (who they are, every answer
they gave, the true honest nodes near any target, which they can learn with ordinary
lookups), so each behaviour is the strongest version of its idea that this knowledge allows.
Every answer is a pure function of what was asked before: runs stay deterministic.

* ``misroute`` — name the ``k`` colluders closest to the target, never an honest node. Every
  colluder names the same cluster, so a lookup that met one cluster can route around it.
* ``scatter`` — name colluders near the target, but never the same colluder twice to the
  same requester for the same target: each answer (from any colluder) hands the requester
  fresh colluders, so every path of a disjoint lookup meets its own.
* ``forge`` — name the true ``k`` honest nodes closest to the target, each with a false
  address (its host, another port; each colluder its own): the requester learns the right
  ids and cannot reach them, and (before lookups learned better) its timeouts there counted
  against honest ids.
* ``scatter-forge`` — half and half, interleaved: forged honest neighbours of the target
  and fresh colluders.
* ``silent`` — handled by the engine layer (:mod:`.nodes`): drop everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...core.ids import NodeId
from ...core.messages import Address, Contact
from ..simulation import LiveIds

MISROUTE = "misroute"
SCATTER = "scatter"
FORGE = "forge"
SCATTER_FORGE = "scatter-forge"
SILENT = "silent"
ANSWERING = (MISROUTE, SCATTER, FORGE, SCATTER_FORGE)
"""Behaviours that answer (with something false)."""
BEHAVIOURS = (*ANSWERING, SILENT)

HonestOracle = Callable[[NodeId], Sequence[Contact]]
"""The honest live nodes nearest a target, nearest first (ground truth, with addresses)."""


def forged_address(contact: Contact, liar: NodeId) -> Address:
    """A false address for an honest node: its host, a port where nothing listens. Each
    colluder tells its own lie, so a requester that met several of them holds several false
    addresses for the node (and a lookup that tries a bounded number of addresses per id
    can use them all up on lies)."""
    port = 1024 + ((contact.node_id ^ liar) >> 200) % 60_000
    if port == contact.port:
        port += 1
    return (contact.host, port)


class Conspiracy:
    """What colluding nodes share, and the answers they give (see the module doc)."""

    __slots__ = ("_contacts", "_ids", "_named", "honest", "k")

    def __init__(self, k: int, honest: HonestOracle | None = None) -> None:
        self.k = k
        self.honest = honest
        """Ground truth for the forging behaviours (set by the scenario)."""
        self._ids = LiveIds()
        self._contacts: dict[int, Contact] = {}
        self._named: dict[tuple[int, int], set[int]] = {}
        """(requester, target) → colluders already named to it (``scatter``)."""

    def __len__(self) -> int:
        return len(self._contacts)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._contacts

    def add(self, node_id: NodeId, address: Address) -> None:
        self._ids.add(node_id)
        self._contacts[node_id] = Contact(node_id, address[0], address[1])

    def discard(self, node_id: NodeId) -> None:
        self._ids.discard(node_id)
        self._contacts.pop(node_id, None)

    def forget_answers(self) -> None:
        """Drop the memory of what was named to whom (between measurement batches)."""
        self._named.clear()

    # --- the answers ---------------------------------------------------------------------

    def answer(
        self, behaviour: str, target: NodeId, requester: NodeId, me: NodeId
    ) -> tuple[Contact, ...]:
        """The contacts colluder ``me`` names to ``requester`` as closest to ``target``."""
        if behaviour == MISROUTE:
            return self.closest(target, exclude=requester)
        if behaviour == SCATTER:
            return tuple(self._scatter(target, requester, me, self.k))
        if behaviour == FORGE:
            return tuple(self._forged(target, requester, me, self.k))
        if behaviour == SCATTER_FORGE:
            forged = self._forged(target, requester, me, (self.k + 1) // 2)
            fresh = self._scatter(target, requester, me, self.k - len(forged))
            mixed: list[Contact] = []
            for i in range(max(len(forged), len(fresh))):
                mixed.extend(forged[i : i + 1])
                mixed.extend(fresh[i : i + 1])
            return tuple(mixed)
        raise ValueError(f"{behaviour!r} does not answer")

    def closest(self, target: NodeId, exclude: NodeId | None = None) -> tuple[Contact, ...]:
        """The ``k`` colluders nearest ``target`` (never ``exclude``, the requester)."""
        contacts = self._contacts
        return tuple(contacts[i] for i in self._ids.closest(target, self.k, exclude=exclude))

    def _scatter(self, target: NodeId, requester: NodeId, me: NodeId, count: int) -> list[Contact]:
        """The ``count`` colluders nearest ``target`` never named to ``requester`` for it."""
        if count <= 0:
            return []
        named = self._named.setdefault((requester, target), set())
        named.add(me)  # it already knows the one it asked
        want = count + len(named) + 1
        chosen: list[Contact] = []
        for node_id in self._ids.closest(target, want, exclude=requester):
            if node_id not in named:
                chosen.append(self._contacts[node_id])
                if len(chosen) == count:
                    break
        named.update(c.node_id for c in chosen)
        return chosen

    def _forged(self, target: NodeId, requester: NodeId, me: NodeId, count: int) -> list[Contact]:
        """The ``count`` honest nodes nearest ``target``, at false addresses."""
        if self.honest is None:
            raise RuntimeError("forging needs the honest oracle (Conspiracy.honest)")
        out: list[Contact] = []
        for contact in self.honest(target):
            if contact.node_id == requester:
                continue
            host, port = forged_address(contact, me)
            out.append(Contact(contact.node_id, host, port))
            if len(out) == count:
                break
        return out
