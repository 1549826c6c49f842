"""The two ways the adversarial scenario scores a lookup or a get, from ground truth.

* **ours** — what a user of the DHT needs. A lookup succeeds when its merged result holds the
  honest node closest to the target (the node a put must reach and a get must ask, which
  colluders can hide but not impersonate: ids are hashes of keys); a get, when it finds the
  value that was stored on the target's honest neighbours.
* **strict** — the S/Kademlia paper's (Baumgart & Mies 2007): some path reached the target's
  honest neighbourhood *without querying a hostile node*. For a lookup: some path queried the
  honest node closest to the target, and heard its answer, before that path had queried any
  hostile node; for a get: some path heard from a node holding the value before it had
  queried any hostile node. (What a path queries after reaching the target does not count:
  finishing a lookup means asking all of the target's k closest, a fifth of which are
  hostile at 20%.)

Strict is lower than ours when lookups succeed only on paths that met hostile nodes and were
led past them (by the lookup's own rules, e.g. its retries of other addresses).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from ..core.events import LookupDone
from ..core.ids import NodeId
from ..core.lookup import AnyLookup, CandidateState, DisjointLookup, Lookup


def paths_of(lookup: AnyLookup) -> Sequence[Lookup]:
    return lookup.paths if isinstance(lookup, DisjointLookup) else (lookup,)


def lookup_ok(event: LookupDone, honest_closest: Sequence[NodeId]) -> bool:
    """Ours: the result holds the honest node closest to the target."""
    return bool(honest_closest) and any(c.node_id == honest_closest[0] for c in event.contacts)


def reached_cleanly(path: Lookup, hostile: Container[int], goals: Container[int]) -> bool:
    """Whether ``path`` queried a node of ``goals`` that answered before it queried any
    hostile node."""
    for node_id in path.queried:
        if node_id in hostile:
            return False
        if node_id in goals:
            cand = path.candidate(node_id)
            if cand is not None and cand.state is CandidateState.RESPONDED:
                return True
    return False


def lookup_ok_strict(
    lookup: AnyLookup, hostile: Container[int], honest_closest: Sequence[NodeId]
) -> bool:
    """The paper's: some path reached the honest node closest to the target (it answered)
    before that path queried any hostile node."""
    if not honest_closest:
        return False
    goal = {honest_closest[0]}
    return any(reached_cleanly(path, hostile, goal) for path in paths_of(lookup))


def get_ok_strict(lookup: AnyLookup, hostile: Container[int], holders: Container[int]) -> bool:
    """The paper's, for a get: some path heard from a holder of the value before it queried
    any hostile node."""
    return any(reached_cleanly(path, hostile, holders) for path in paths_of(lookup))
