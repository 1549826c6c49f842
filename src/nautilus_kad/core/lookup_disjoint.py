"""Disjoint-path lookups (S/Kademlia, Baumgart & Mies 2007): ``d`` lookups that never query
the same node.

The initial closest contacts are dealt round-robin to the paths; each path is a
:class:`~.lookup.Lookup` fed only by the answers to its own queries, and a node is queried by
at most one path (:class:`~.lookup._Shared` decides who may ask whom). A misrouting node can
then poison only the path that asked it, and the lookup still succeeds if any path stays
clean. Results merge: the k closest that answered on any path. :func:`new_lookup` gives a plain
lookup for one path and a :class:`DisjointLookup` for more; :data:`AnyLookup` is what the engine
drives.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from .ids import NodeId
from .lookup import Candidate, Lookup, _Shared
from .messages import Address, Contact


class DisjointLookup:
    """``paths`` lookups for ``target`` that never query the same node (S/Kademlia).

    It has :class:`Lookup`'s interface, so the engine drives either the same way. Each path
    keeps ``alpha`` requests in flight, so up to ``paths * alpha`` are in flight in all; the
    lookup is done when every path is done (or :meth:`finish` is called, e.g. at the first
    valid value any path found).
    """

    def __init__(
        self,
        target: NodeId,
        own_id: NodeId,
        k: int,
        alpha: int,
        seeds: Iterable[Contact],
        paths: int,
        max_candidates: int = 0,
    ) -> None:
        if paths < 1:
            raise ValueError("a lookup needs at least one path")
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.finished = False
        shared = _Shared()
        self._shared = shared
        self._owners = shared.owners
        ordered = sorted(
            {c.node_id: c for c in seeds if c.node_id != own_id}.values(),
            key=lambda c: c.node_id ^ target,
        )
        shares: list[list[Contact]] = [[] for _ in range(paths)]
        for i, contact in enumerate(ordered):
            shares[i % paths].append(contact)
            self._owners[contact.node_id] = i % paths  # each seed belongs to its own path
        self.paths = [
            Lookup(
                target, own_id, k, alpha, share, max_candidates,
                owners=self._owners, path=i, shared=shared,
            )
            for i, share in enumerate(shares)
        ]  # fmt: skip
        shared.paths = self.paths

    def _path_of(self, node_id: NodeId, address: Address | None = None) -> Lookup | None:
        """The path that asked ``node_id`` (at ``address``, when given)."""
        shared = self._shared
        if address is not None:
            index = shared.attempts.get((node_id, address))
            if index is not None:
                return self.paths[index]
        owner = shared.owners.get(node_id)
        return None if owner is None else self.paths[owner]

    # --- feeding: an answer goes to the one path that asked ---------------------------------

    def on_response(
        self,
        node_id: NodeId,
        contacts: Iterable[Contact] = (),
        token: bytes = b"",
        address: Address | None = None,
    ) -> None:
        path = self._path_of(node_id, address)
        if path is None:
            return
        if self._shared.answered.setdefault(node_id, path._path) != path._path:
            # It answered another path first: it belongs to that one.
            path.on_failure(node_id, address, final=True)
            return
        path.on_response(node_id, contacts, token, address)

    def on_soft_timeout(self, node_id: NodeId, address: Address | None = None) -> None:
        path = self._path_of(node_id, address)
        if path is not None:
            path.on_soft_timeout(node_id, address)

    def on_give_up(self, node_id: NodeId, address: Address | None = None) -> None:
        path = self._path_of(node_id, address)
        if path is not None:
            path.on_give_up(node_id, address)

    def on_failure(
        self, node_id: NodeId, address: Address | None = None, *, final: bool = False
    ) -> None:
        path = self._path_of(node_id, address)
        if path is not None:
            path.on_failure(node_id, address, final=final)

    def on_departing(
        self,
        node_id: NodeId,
        contacts: Iterable[Contact] = (),
        token: bytes = b"",
        address: Address | None = None,
    ) -> None:
        path = self._path_of(node_id, address)
        if path is None:
            return
        if self._shared.answered.setdefault(node_id, path._path) != path._path:
            path.on_failure(node_id, address, final=True)
            return
        path.on_departing(node_id, contacts, token, address)

    # --- driving --------------------------------------------------------------------------

    def next_queries(self) -> list[Contact]:
        if self.finished:
            return []
        chosen: list[Contact] = []
        for path in self.paths:
            if not path.is_done:
                chosen.extend(path.next_queries())
        return chosen

    @property
    def is_done(self) -> bool:
        return self.finished or all(path.is_done for path in self.paths)

    def finish(self) -> None:
        self.finished = True
        for path in self.paths:
            path.finish()

    @property
    def in_flight(self) -> int:
        return sum(path.in_flight for path in self.paths)

    @property
    def slow(self) -> int:
        return sum(path.slow for path in self.paths)

    @property
    def queries_sent(self) -> int:
        return sum(path.queries_sent for path in self.paths)

    @property
    def responses(self) -> int:
        return sum(path.responses for path in self.paths)

    # --- results: merged over the paths ------------------------------------------------------

    def closest_responded(self, count: int | None = None) -> list[Candidate]:
        limit = self.k if count is None else count
        if limit <= 0:
            return []
        merged = heapq.merge(
            *(path.closest_responded(limit) for path in self.paths), key=lambda c: c.distance
        )
        return list(itertools.islice(merged, limit))

    def candidate(self, node_id: NodeId) -> Candidate | None:
        path = self._path_of(node_id)
        return None if path is None else path.candidate(node_id)

    @property
    def hops(self) -> int:
        return max((c.hop for c in self.closest_responded()), default=0)


AnyLookup = Lookup | DisjointLookup
"""What the engine drives."""


def new_lookup(
    target: NodeId, own_id: NodeId, k: int, alpha: int, seeds: Iterable[Contact], paths: int = 1
) -> AnyLookup:
    """A plain lookup for one path, a :class:`DisjointLookup` for more."""
    if paths <= 1:
        return Lookup(target, own_id, k, alpha, seeds)
    return DisjointLookup(target, own_id, k, alpha, seeds, paths)
