"""The iterative lookup as a pure state machine.

The engine asks :meth:`Lookup.next_queries` which peers to contact, and reports each answer,
soft timeout and failure. The lookup keeps ``alpha`` requests in flight at all times (no
lock-step rounds): every answer or soft timeout immediately frees a slot. A peer past its soft
timeout stops counting against the result but may still answer and be used. The lookup is done
when the ``k`` closest candidates that have not failed have all answered.

Candidate order is kept in a list sorted by XOR distance; distances are plain ints so the
insertion is a C-level bisect.
"""

from __future__ import annotations

import bisect
import enum
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
        self.finished = False
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
        for d in self._distances:
            cand = self._by_distance[d]
            state = cand.state
            if state is _FAILED or state is _SLOW:
                continue
            if state is _NEW:
                cand.state = _IN_FLIGHT
                chosen.append(cand.contact)
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
