"""The iterative lookup as a pure state machine.

The engine asks :meth:`Lookup.next_queries` which peers to contact, and reports each answer,
soft timeout and failure. The lookup keeps ``alpha`` requests in flight at all times (no
lock-step rounds): every answer or soft timeout immediately frees a slot. A peer past its soft
timeout stops counting against the result but may still answer and be used. The lookup is done
when the ``k`` closest candidates that have not failed have all answered.

Candidate order is kept in a list sorted by XOR distance; distances are plain ints so the
insertion is a C-level bisect.

:class:`DisjointLookup` runs ``d`` such lookups side by side on disjoint paths (S/Kademlia,
Baumgart & Mies 2007): the initial closest contacts are dealt round-robin to the paths, each path
is its own alpha-parallel iterative lookup fed only by the answers to its own queries, and a node is
queried by at most one path (the first to ask it owns it; every other path skips it). A
misrouting node can then poison only the path that asked it, and the lookup still succeeds if
any path stays clean. Results merge: the k closest that answered on any path.
"""

from __future__ import annotations

import bisect
import enum
import heapq
import itertools
from collections.abc import Iterable

from .ids import NodeId
from .messages import Contact


class CandidateState(enum.IntEnum):
    NEW = 0
    IN_FLIGHT = 1
    SLOW = 2
    RESPONDED = 3
    FAILED = 4


class Candidate:
    __slots__ = ("awaited", "contact", "distance", "hop", "state", "token")

    def __init__(self, contact: Contact, distance: int, hop: int) -> None:
        self.contact = contact
        self.distance = distance
        self.hop = hop
        self.state = CandidateState.NEW
        self.token = b""
        self.awaited = True
        """While SLOW: the lookup does not finish without it if it is among the k closest
        (until :meth:`Lookup.on_give_up`)."""


_NEW = CandidateState.NEW
_IN_FLIGHT = CandidateState.IN_FLIGHT
_SLOW = CandidateState.SLOW
_RESPONDED = CandidateState.RESPONDED
_FAILED = CandidateState.FAILED


class Lookup:
    """Iterative search for the ``k`` nodes closest to ``target``."""

    def __init__(
        self,
        target: NodeId,
        own_id: NodeId,
        k: int,
        alpha: int,
        seeds: Iterable[Contact],
        max_candidates: int = 0,
        *,
        owners: dict[NodeId, int] | None = None,
        path: int = 0,
    ) -> None:
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.max_candidates = max_candidates or 8 * k
        self._distances: list[int] = []
        self._by_distance: dict[int, Candidate] = {}
        self.in_flight = 0
        self.slow = 0
        self.queries_sent = 0
        self.responses = 0
        self.queried: list[NodeId] = []
        """Every node this lookup (this path) sent a request to, in order (for observers:
        the simulator's scoring asks whether a path touched a hostile node)."""
        self.finished = False
        self._owners = owners
        """Shared by the paths of a :class:`DisjointLookup`: which path queried each node."""
        self._path = path
        self.add_contacts(seeds, hop=1)

    # --- feeding -----------------------------------------------------------------------

    def add_contacts(self, contacts: Iterable[Contact], hop: int) -> None:
        """Learn new candidates (from a NODES answer at ``hop - 1`` or from the table)."""
        target = self.target
        own_id = self.own_id
        known = self._by_distance
        distances = self._distances
        limit = self.max_candidates
        for contact in contacts:
            node_id = contact.node_id
            if node_id == own_id:
                continue
            d = node_id ^ target
            if d in known:
                continue
            if len(distances) >= limit and d > distances[-1]:
                continue
            bisect.insort(distances, d)
            known[d] = Candidate(contact, d, hop)
            if len(distances) > limit:
                self._drop_farthest_idle()

    def _drop_farthest_idle(self) -> None:
        for i in range(len(self._distances) - 1, -1, -1):
            cand = self._by_distance[self._distances[i]]
            if cand.state is _NEW or cand.state is _FAILED:
                del self._by_distance[self._distances[i]]
                del self._distances[i]
                return

    def _get(self, node_id: NodeId) -> Candidate | None:
        return self._by_distance.get(node_id ^ self.target)

    def on_response(
        self, node_id: NodeId, contacts: Iterable[Contact] = (), token: bytes = b""
    ) -> None:
        """``node_id`` answered (possibly after its soft timeout)."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED:
            return
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        elif cand.state is _SLOW:
            self.slow -= 1
        cand.state = _RESPONDED
        cand.token = token
        self.responses += 1
        self.add_contacts(contacts, cand.hop + 1)

    def on_departing(
        self, node_id: NodeId, contacts: Iterable[Contact] = (), token: bytes = b""
    ) -> None:
        """``node_id`` answered but is leaving the network: its contacts are used, but it
        does not count among the closest (nothing should be stored on it, and a lookup
        must not report it as one of the k nodes that keep a key)."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED or cand.state is _FAILED:
            return
        self.on_response(node_id, contacts, token)
        cand.state = _FAILED

    def on_soft_timeout(self, node_id: NodeId) -> None:
        """``node_id`` is slow: free its slot, stop counting it among the closest."""
        cand = self._get(node_id)
        if cand is not None and cand.state is _IN_FLIGHT:
            cand.state = _SLOW
            self.in_flight -= 1
            self.slow += 1

    def on_give_up(self, node_id: NodeId) -> None:
        """Stop waiting for slow ``node_id``: the lookup may finish without it (it may still
        answer and be used while the lookup runs)."""
        cand = self._get(node_id)
        if cand is not None:
            cand.awaited = False

    def on_failure(self, node_id: NodeId) -> None:
        """``node_id`` will not answer (hard timeout or an error answer)."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED or cand.state is _FAILED:
            return
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        elif cand.state is _SLOW:
            self.slow -= 1
        cand.state = _FAILED

    # --- driving -----------------------------------------------------------------------

    def next_queries(self) -> list[Contact]:
        """Contacts to query now; marks them in flight. Empty when slots are full or the
        lookup is done (check :attr:`is_done`)."""
        if self.finished:
            return []
        free = self.alpha - self.in_flight
        if free <= 0:
            return []
        chosen: list[Contact] = []
        seen = 0
        owners = self._owners
        for d in self._distances:
            cand = self._by_distance[d]
            state = cand.state
            if state is _FAILED or state is _SLOW:
                continue
            if state is _NEW:
                if owners is not None:
                    owner = owners.setdefault(cand.contact.node_id, self._path)
                    if owner != self._path:
                        # Another path asked it first: for this path it does not exist.
                        cand.state = _FAILED
                        continue
                cand.state = _IN_FLIGHT
                chosen.append(cand.contact)
                self.queried.append(cand.contact.node_id)
                if len(chosen) == free:
                    break
            seen += 1
            if seen >= self.k:
                break
        self.in_flight += len(chosen)
        self.queries_sent += len(chosen)
        return chosen

    @property
    def is_done(self) -> bool:
        """True once the ``k`` closest live candidates have all answered, and no slow one
        still awaited is closer than the k-th of them."""
        if self.finished:
            return True
        seen = 0
        for d in self._distances:
            cand = self._by_distance[d]
            state = cand.state
            if state is _SLOW:
                if cand.awaited:
                    return False
                continue
            if state is _FAILED:
                continue
            if state is not _RESPONDED:
                return False
            seen += 1
            if seen >= self.k:
                return True
        # Nobody answered yet: rather than give up, wait for the slow ones to answer or fail.
        return seen > 0 or self.slow == 0

    def finish(self) -> None:
        self.finished = True

    # --- results -----------------------------------------------------------------------

    def closest_responded(self, count: int | None = None) -> list[Candidate]:
        """The closest candidates that answered, nearest first."""
        limit = self.k if count is None else count
        result: list[Candidate] = []
        if limit <= 0:
            return result
        for d in self._distances:
            cand = self._by_distance[d]
            if cand.state is _RESPONDED:
                result.append(cand)
                if len(result) >= limit:
                    break
        return result

    def candidate(self, node_id: NodeId) -> Candidate | None:
        return self._get(node_id)

    @property
    def hops(self) -> int:
        """Rounds of the search needed to reach the final k: the deepest hop among them."""
        return max((c.hop for c in self.closest_responded()), default=0)


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
        self._owners: dict[NodeId, int] = {}
        ordered = sorted(
            {c.node_id: c for c in seeds if c.node_id != own_id}.values(),
            key=lambda c: c.node_id ^ target,
        )
        shares: list[list[Contact]] = [[] for _ in range(paths)]
        for i, contact in enumerate(ordered):
            shares[i % paths].append(contact)
            self._owners[contact.node_id] = i % paths  # each seed belongs to its own path
        self.paths = [
            Lookup(target, own_id, k, alpha, share, max_candidates, owners=self._owners, path=i)
            for i, share in enumerate(shares)
        ]

    def _path_of(self, node_id: NodeId) -> Lookup | None:
        owner = self._owners.get(node_id)
        return None if owner is None else self.paths[owner]

    # --- feeding: an answer goes to the one path that asked ---------------------------------

    def on_response(
        self, node_id: NodeId, contacts: Iterable[Contact] = (), token: bytes = b""
    ) -> None:
        path = self._path_of(node_id)
        if path is not None:
            path.on_response(node_id, contacts, token)

    def on_soft_timeout(self, node_id: NodeId) -> None:
        path = self._path_of(node_id)
        if path is not None:
            path.on_soft_timeout(node_id)

    def on_give_up(self, node_id: NodeId) -> None:
        path = self._path_of(node_id)
        if path is not None:
            path.on_give_up(node_id)

    def on_failure(self, node_id: NodeId) -> None:
        path = self._path_of(node_id)
        if path is not None:
            path.on_failure(node_id)

    def on_departing(
        self, node_id: NodeId, contacts: Iterable[Contact] = (), token: bytes = b""
    ) -> None:
        path = self._path_of(node_id)
        if path is not None:
            path.on_departing(node_id, contacts, token)

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
