"""Joining the network, and single-request probes (PING, one FIND_NODE).

A bootstrap runs in three phases: ``seeds`` (PING the addresses we were given; the first
answer is enough), ``self`` (a lookup of our own id, which fills the buckets near us), then
``refresh`` (a lookup of a random id in every bucket farther than our nearest neighbour, with
``join_refresh``). It ends with :class:`BootstrapDone` or :class:`QueryFailed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .context import NodeContext
from .events import BootstrapDone, NodesAnswered, PingDone
from .ids import ID_BITS, NodeId, random_id_in_bucket
from .lookup import Candidate
from .lookups import LookupQuery, Lookups
from .messages import Address, Contact, Message, Nodes, Ping
from .pending import Pending
from .rpc import Queries, Requests


@dataclass(slots=True, eq=False)
class ProbeQuery:
    """One PING (``ping``) or one FIND_NODE to one address (``find_node_at``)."""

    query_id: int
    queries: Queries
    ctx: NodeContext
    internal: bool = False

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        del self.queries[self.query_id]
        if isinstance(message, Nodes):  # find_node_at
            self.ctx.events.append(NodesAnswered(self.query_id, contact, message.contacts, rtt))
        elif not self.internal:
            self.ctx.events.append(PingDone(self.query_id, contact, rtt))

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """Never called: only :meth:`.Requests.resend_and_wait` arms a grace, and this
        owner's requests never pass through it (it waits for the hard deadline)."""

    def on_timeout(self, pending: Pending, now: float) -> None:
        del self.queries[self.query_id]
        if not self.internal:
            host, port = pending.address
            self.queries.fail(self.query_id, f"no answer from {host}:{port}")


@dataclass(slots=True, eq=False)
class BootstrapQuery:
    query_id: int
    owner: Bootstrap
    seeds_waiting: int
    lookups_waiting: int = 0
    phase: str = "seeds"
    """seeds (pinging known addresses) → self (own-id lookup) → refresh (farther buckets)."""

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        self.seeds_waiting -= 1
        self.owner.progress(self, now)

    def on_slow(self, pending: Pending, now: float) -> None:
        pass

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """Never called: only :meth:`.Requests.resend_and_wait` arms a grace, and this
        owner's requests never pass through it (it waits for the hard deadline)."""

    def on_timeout(self, pending: Pending, now: float) -> None:
        self.seeds_waiting -= 1
        self.owner.progress(self, now)


class Bootstrap:
    """Runs bootstraps (see the module docstring)."""

    __slots__ = ("_ctx", "_lookups", "_queries", "_requests")

    def __init__(
        self, ctx: NodeContext, queries: Queries, requests: Requests, lookups: Lookups
    ) -> None:
        self._ctx = ctx
        self._queries = queries
        self._requests = requests
        self._lookups = lookups

    def start(self, seeds: Iterable[Address], now: float) -> int:
        qid = self._queries.new_id()
        seed_list = list(dict.fromkeys(seeds))
        query = BootstrapQuery(qid, self, seeds_waiting=0)
        self._queries[qid] = query
        for address in seed_list:
            if self._requests.send(address, None, Ping(), now, qid):
                query.seeds_waiting += 1
        if query.seeds_waiting == 0:
            if len(self._ctx.table):
                self._lookups_phase(query, now)
            else:
                self._queries.fail(qid, "no bootstrap address to contact")
        return qid

    def progress(self, query: BootstrapQuery, now: float) -> None:
        """A seed answered or timed out. The first answer is enough to start the lookups;
        later answers still enter the table."""
        if query.phase != "seeds" or self._queries.get(query.query_id) is not query:
            return
        if len(self._ctx.table):
            self._lookups_phase(query, now)
        elif query.seeds_waiting == 0:
            self._queries.fail(query.query_id, "no bootstrap peer answered")

    def _lookups_phase(self, query: BootstrapQuery, now: float) -> None:
        query.phase = "self"
        query.lookups_waiting = 1
        self._lookup(query, self._ctx.node_id, now)

    def _lookup(self, query: BootstrapQuery, target: NodeId, now: float) -> None:
        def done(_: LookupQuery, closest: list[Candidate], now: float) -> None:
            self._lookup_done(query, closest, now)

        self._lookups.start(target, now, want_value=False, on_done=done)

    def _lookup_done(self, query: BootstrapQuery, closest: list[Candidate], now: float) -> None:
        ctx = self._ctx
        query.lookups_waiting -= 1
        if query.lookups_waiting > 0:
            return
        if query.phase == "self" and ctx.config.join_refresh:
            # Our own neighbourhood is known; now refresh every bucket farther than our
            # nearest neighbour, so the table covers the whole id space.
            query.phase = "refresh"
            sizes = ctx.table.bucket_sizes()
            nearest = max(sizes) if sizes else 0
            targets = [
                random_id_in_bucket(ctx.node_id, i, ctx.rng)
                for i in range(min(nearest, self._last_incomplete(closest)))
            ]
            query.lookups_waiting = len(targets)
            for target in targets:
                self._lookup(query, target, now)
            if targets:
                return
        if query.lookups_waiting <= 0 and self._queries.get(query.query_id) is query:
            del self._queries[query.query_id]
            ctx.events.append(BootstrapDone(query.query_id, len(ctx.table)))

    def _last_incomplete(self, closest: list[Candidate]) -> int:
        """One past the farthest bucket the own-id lookup may have left incomplete.

        The lookup ends when the k closest nodes it heard of have all answered: every node
        nearer to us than the k-th of them answered it, and so entered our table. A bucket
        whose whole range lies nearer than that is therefore complete already, and a refresh
        lookup there would only ask again the nodes we just heard from (at 200 nodes, four
        of the seven refresh lookups the paper's rule makes). The bucket holding the k-th
        closest is partly outside that radius and is refreshed, as is every farther one.
        With fewer than k answers the radius proves nothing: every bucket is refreshed.
        """
        if len(closest) < self._ctx.config.k:
            return ID_BITS
        return ID_BITS - closest[-1].distance.bit_length() + 1
