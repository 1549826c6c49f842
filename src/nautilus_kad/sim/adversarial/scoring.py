"""The two ways the adversarial scenario scores a lookup or a get, from ground truth.

* **ours** — what a user of the DHT needs. A lookup succeeds when its merged result holds the
  honest node closest to the target (the node a put must reach and a get must ask, which
  colluders can hide but not impersonate: ids are hashes of keys); a get, when it finds the
  value that was stored on the target's honest neighbours.
* **strict** — the S/Kademlia paper's (Baumgart & Mies 2007): some path reached the target's
  honest neighbourhood *without querying a hostile node*: some path heard an answer from one
  of the k honest nodes closest to the target (they know the target's closest node, and hold
  its value) before that path had queried any hostile node. (What a path queries after
  that does not count: finishing a lookup means asking all of the target's k closest, a
  fifth of which are hostile at 20%.)

The two differ both ways: strict is lower when lookups get through only on paths that met
hostile nodes and were led past them (by the lookup's own rules, e.g. its retries of other
addresses); it is higher when a clean path reached the neighbourhood but the merged result
still lacks the single closest honest node (which ours demands).
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from ...core.events import LookupDone
from ...core.ids import NodeId
from ...core.lookup import CandidateState, Lookup
from ...core.lookup_disjoint import AnyLookup, DisjointLookup


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


def strict_ok(lookup: AnyLookup, hostile: Container[int], neighbourhood: Container[int]) -> bool:
    """The paper's: some path heard from a node of the target's honest ``neighbourhood``
    (its k closest honest nodes; for a get, the holders of the value) before that path
    queried any hostile node."""
    return any(reached_cleanly(path, hostile, neighbourhood) for path in paths_of(lookup))
