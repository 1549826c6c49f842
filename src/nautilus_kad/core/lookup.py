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

A node id is not its address: a hostile peer can name a real node at a false address. A
lookup therefore remembers the other addresses it hears for an id (up to eight, with how
many peers named each), and one that stays silent (past its soft timeout, or failed) is
tried at the address most peers named, up to three addresses in all, and up to six when two
or more peers named each of the others: honest peers agree on a node's address, liars that
each tell their own lie do not. An answer from any of them counts (it is signed by the id's
key). Across disjoint paths, a node belongs to the path it first *answered*: a path may try
a node that another path asked but has not heard from past that path's soft timeout, at an
address nobody tried yet, so a path fed a false address cannot keep the real node from the
others.

:class:`~.lookup_disjoint.DisjointLookup` (and :func:`~.lookup_disjoint.new_lookup`, which picks
one or the other) live in :mod:`.lookup_disjoint`; the paths' shared bookkeeping stays here,
next to the single path that consults it.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable

from .ids import NodeId
from .messages import Address, Contact

MAX_ADDRESSES = 3
"""Addresses a lookup tries for one node id (the first heard and up to two others)..."""
MAX_VOUCHED = 6
"""... and beyond those, up to this many in all, addresses that two or more peers named:
honest peers agree on a node's address, liars that each tell their own lie do not."""
MAX_HEARD = 8
"""Untried addresses remembered per id (with how many peers named each)."""


class CandidateState(enum.IntEnum):
    NEW = 0
    IN_FLIGHT = 1
    SLOW = 2
    RESPONDED = 3
    FAILED = 4


class Candidate:
    __slots__ = (
        "awaited",
        "contact",
        "distance",
        "final",
        "heard",
        "hop",
        "state",
        "token",
        "tried",
    )

    def __init__(self, contact: Contact, distance: int, hop: int) -> None:
        self.contact = contact
        """The address being tried (or the one that answered)."""
        self.heard: dict[Address, int] | None = None
        """Other addresses heard for the id, not tried yet → how many peers named each."""
        self.tried: list[Address] | None = None
        """Addresses this lookup already tried and left behind."""
        self.final = False
        """FAILED for good: no other address will be tried (an error answer, or the node
        answered another path)."""
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
        shared: _Shared | None = None,
    ) -> None:
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.max_candidates = max_candidates or 8 * k
        self._distances: list[int] = []
        self._by_distance: dict[int, Candidate] = {}
        self._sorted: list[Candidate] = []
        """The candidates of ``_distances``, in the same order: the scans after every answer
        walk this list instead of looking each distance (a 256-bit int to hash) up."""
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
        self._shared = shared
        self._path = path
        self.add_contacts(seeds, hop=1)

    # --- feeding -----------------------------------------------------------------------

    def add_contacts(self, contacts: Iterable[Contact], hop: int) -> None:
        """Learn new candidates (from a NODES answer at ``hop - 1`` or from the table)."""
        target = self.target
        own_id = self.own_id
        known = self._by_distance
        distances = self._distances
        ordered = self._sorted
        limit = self.max_candidates
        for contact in contacts:
            node_id = contact.node_id
            if node_id == own_id:
                continue
            d = node_id ^ target
            cand = known.get(d)
            if cand is not None:
                held = cand.contact
                if (
                    held is not contact  # (contacts decoded through a memo are shared)
                    and cand.state is not _RESPONDED
                    and (held.port != contact.port or held.host != contact.host)
                ):
                    self._other_address(cand, contact)
                continue
            if len(distances) >= limit and d > distances[-1]:
                continue
            i = bisect.bisect_right(distances, d)
            distances.insert(i, d)
            known[d] = cand = Candidate(contact, d, hop)
            ordered.insert(i, cand)
            if len(distances) > limit:
                self._drop_farthest_idle()

    def _drop_farthest_idle(self) -> None:
        ordered = self._sorted
        for i in range(len(ordered) - 1, -1, -1):
            cand = ordered[i]
            if cand.state is _NEW or cand.state is _FAILED:
                del self._by_distance[self._distances[i]]
                del self._distances[i]
                del ordered[i]
                return

    def _get(self, node_id: NodeId) -> Candidate | None:
        return self._by_distance.get(node_id ^ self.target)

    def _other_address(self, cand: Candidate, contact: Contact) -> None:
        """``contact`` names a known candidate at another address."""
        if cand.final:
            return
        address = contact.address
        tried = cand.tried
        if tried is not None and address in tried:
            return
        heard = cand.heard
        if heard is None:
            heard = cand.heard = {}
        votes = heard.get(address)
        if votes is not None:
            heard[address] = votes + 1
        elif len(heard) < MAX_HEARD:
            heard[address] = 1
        else:
            # Full (a flood of lies): forget the oldest address only one peer named.
            for old, count in heard.items():
                if count == 1:
                    del heard[old]
                    heard[address] = 1
                    break
            else:
                return
        state = cand.state
        if state is _SLOW or state is _FAILED:
            # The address tried stays silent: try another now (an answer still arriving
            # from the old one counts too).
            switched = self._next_address(cand)
            if switched and state is _SLOW:
                self.slow -= 1

    def _switch(self, cand: Candidate, contact: Contact) -> None:
        """Leave the current address behind; the candidate is to be queried at ``contact``."""
        if cand.tried is None:
            cand.tried = [cand.contact.address]
        else:
            cand.tried.append(cand.contact.address)
        cand.contact = contact
        cand.state = _NEW
        cand.awaited = True

    def _next_address(self, cand: Candidate) -> bool:
        """Switch to the untried address most peers named (the earliest heard among equals),
        within the budget: ``MAX_ADDRESSES`` in all, up to ``MAX_VOUCHED`` for addresses two
        or more peers named. False when none may be tried."""
        heard = cand.heard
        if not heard:
            return False
        used = 1 if cand.tried is None else 1 + len(cand.tried)
        best = max(heard, key=heard.__getitem__)
        if used >= MAX_ADDRESSES and (heard[best] < 2 or used >= MAX_VOUCHED):
            return False
        del heard[best]
        self._switch(cand, Contact(cand.contact.node_id, best[0], best[1]))
        return True

    @staticmethod
    def _stale(cand: Candidate, address: Address | None) -> bool:
        """An event about an address the candidate has moved on from."""
        return address is not None and address != cand.contact.address

    def on_response(
        self,
        node_id: NodeId,
        contacts: Iterable[Contact] = (),
        token: bytes = b"",
        address: Address | None = None,
    ) -> None:
        """``node_id`` answered (possibly after its soft timeout; from ``address``, which
        may be one the lookup has since moved on from: the answer counts all the same)."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED:
            return
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        elif cand.state is _SLOW:
            self.slow -= 1
        if self._stale(cand, address):
            assert address is not None
            cand.contact = Contact(node_id, address[0], address[1])
        cand.state = _RESPONDED
        cand.token = token
        self.responses += 1
        self.add_contacts(contacts, cand.hop + 1)

    def on_departing(
        self,
        node_id: NodeId,
        contacts: Iterable[Contact] = (),
        token: bytes = b"",
        address: Address | None = None,
    ) -> None:
        """``node_id`` answered but is leaving the network: its contacts are used, but it
        does not count among the closest (nothing should be stored on it, and a lookup
        must not report it as one of the k nodes that keep a key)."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED or cand.state is _FAILED:
            return
        self.on_response(node_id, contacts, token, address)
        cand.state = _FAILED
        cand.final = True

    def on_soft_timeout(self, node_id: NodeId, address: Address | None = None) -> None:
        """``node_id`` is slow (at ``address``): free its slot, stop counting it among the
        closest; if another address was heard for it, try that one now."""
        cand = self._get(node_id)
        if cand is None or cand.state is not _IN_FLIGHT or self._stale(cand, address):
            return
        self.in_flight -= 1
        if not self._next_address(cand):
            cand.state = _SLOW
            self.slow += 1

    def on_give_up(self, node_id: NodeId, address: Address | None = None) -> None:
        """Stop waiting for slow ``node_id``: the lookup may finish without it (it may still
        answer and be used while the lookup runs)."""
        cand = self._get(node_id)
        if cand is not None and not self._stale(cand, address):
            cand.awaited = False

    def on_failure(
        self, node_id: NodeId, address: Address | None = None, *, final: bool = False
    ) -> None:
        """``node_id`` will not answer at ``address`` (hard timeout), or will not help at all
        (``final``: an error answer, a refused send): try another address it was named at,
        if any and not ``final``."""
        cand = self._get(node_id)
        if cand is None or cand.state is _RESPONDED:
            return
        if cand.state is _FAILED:
            cand.final = cand.final or final
            return
        if self._stale(cand, address) and not final:
            return
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        elif cand.state is _SLOW:
            self.slow -= 1
        if final or not self._next_address(cand):
            cand.state = _FAILED
            cand.final = final

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
        k = self.k
        shared = self._shared
        for cand in self._sorted:
            state = cand.state
            if state is _FAILED or state is _SLOW:
                continue
            if state is _NEW:
                if shared is not None:
                    verdict = shared.claim(cand, self)
                    if verdict is _DEFER:
                        continue  # another path is asking it: wait for its outcome
                    if verdict is _NEVER:
                        cand.state = _FAILED
                        continue
                    shared.attempts[(cand.contact.node_id, cand.contact.address)] = self._path
                cand.state = _IN_FLIGHT
                chosen.append(cand.contact)
                self.queried.append(cand.contact.node_id)
                if len(chosen) == free:
                    break
            seen += 1
            if seen >= k:
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
        k = self.k
        for cand in self._sorted:
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
            if seen >= k:
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
        for cand in self._sorted:
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


_GO, _DEFER, _NEVER = 0, 1, 2


class _Shared:
    """What the paths of a :class:`DisjointLookup` share: who asked and who answered whom."""

    __slots__ = ("answered", "attempts", "owners", "paths")

    def __init__(self) -> None:
        self.owners: dict[NodeId, int] = {}
        """The path that asked each node last (first, unless another took it over)."""
        self.attempts: dict[tuple[NodeId, Address], int] = {}
        """(node, address) → the path that sent a request there."""
        self.answered: dict[NodeId, int] = {}
        """The path each node answered first: the only one it serves."""
        self.paths: list[Lookup] = []

    def claim(self, cand: Candidate, path: Lookup) -> int:
        """May ``path`` query ``cand`` now? ``_GO`` (its address then noted as tried),
        ``_DEFER`` (another path's request to it is still young), ``_NEVER``."""
        node_id = cand.contact.node_id
        me = path._path
        answered = self.answered.get(node_id)
        if answered is not None and answered != me:
            cand.final = True
            return _NEVER
        owner = self.owners.setdefault(node_id, me)
        if owner != me:
            theirs = self.paths[owner].candidate(node_id)
            if theirs is not None:
                if theirs.state is _IN_FLIGHT:
                    return _DEFER
                if theirs.final:
                    cand.final = True
                    return _NEVER
        # The owner has not asked it yet (it is this path's now), or asked and heard nothing
        # past its soft timeout: take it over. Either way, only at an address no path asked
        # yet, the owner too: answers and timeouts are routed by (node, address) to the path
        # that asked there, so a second request to the same pair would send the first one's
        # outcome to the wrong path, and leave the path that asked waiting for ever.
        attempts = self.attempts
        while (node_id, cand.contact.address) in attempts:
            if not path._next_address(cand):
                return _NEVER
        self.owners[node_id] = me
        return _GO
