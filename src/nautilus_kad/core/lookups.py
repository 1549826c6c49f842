"""Iterative lookups driven over the rpc layer.

:class:`Lookups` runs one :mod:`~.lookup` state machine per lookup: it seeds it from the
routing table (2k contacts, so dead entries fall back on the next ones), sends FIND_NODE or
FIND_VALUE to whatever the state machine asks for, filters the contacts of every NODES answer
(:meth:`Lookups.acceptable`), collects valid values, and stops when the machine is done or the
request limit cut it short.

What happens when a lookup ends is not its business: each :class:`LookupQuery` carries a
continuation ``on_done(query, closest, now)`` given by whoever started it (a user's lookup,
get or put, a bootstrap phase, a holder's republish, a leave, a bucket refresh). The query is
the rpc owner of its requests (:class:`~.rpc.Owner`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter

from .addresses import is_public, is_usable
from .context import NodeContext
from .errors import ValidationError
from .events import QueryFailed
from .ids import NodeId
from .lookup import Candidate
from .lookup_disjoint import AnyLookup, new_lookup
from .messages import Contact, FindNode, FindValue, Message, Nodes, Request, Value
from .pending import Pending
from .records import Record, RecordKind, record_expiry, validate_record
from .rpc import Queries, Requests

_HOST = attrgetter("host")

Continuation = Callable[["LookupQuery", list[Candidate], float], None]
"""What to do with a finished lookup: ``(query, the closest that answered, now)``."""


def nothing(query: LookupQuery, closest: list[Candidate], now: float) -> None:
    """The continuation of a lookup run for its side effects only (a bucket refresh)."""


@dataclass(slots=True, eq=False)
class LookupQuery:
    """One running lookup (or get): its state machine and what its answers brought."""

    query_id: int
    lookup: AnyLookup
    want_value: bool
    owner: Lookups
    on_done: Continuation
    found: Record | None = None
    holders: set[NodeId] = field(default_factory=set)
    """Peers that answered with the value (no point caching it back at them)."""
    overloaded: bool = False
    """A request was refused by ``max_pending_requests``: the result may be incomplete."""
    kind: RecordKind | None = None
    """The record kind a get accepts (None: any valid record)."""
    quorum: int = 1
    """Valid answers a get collects before it stops (more than 1 for signed records)."""
    answers: list[tuple[Contact, Record, bytes]] = field(default_factory=list)
    """Valid (peer, record, token) answers of a quorum get."""
    local: Record | None = None
    """A signed get's own stored copy: one more answer, and corrected if it lags."""
    holders_only: bool = False
    """A leaving node's lookup for one of its keys: a FIND_VALUE that does not stop at the
    value but notes who has it."""
    timeouts: int = 0
    """Requests that passed their soft timeout and had not answered by the end (a late
    answer while the query runs takes its timeout back): what the lookup waited on in
    vain, reported with its result."""

    # --- rpc owner ---------------------------------------------------------------------

    def on_answer(
        self, pending: Pending, contact: Contact, message: Message, rtt: float, departing: bool,
        now: float,
    ) -> None:  # fmt: skip
        if pending.slow:
            self.timeouts -= 1  # it answered after all
        self.owner.on_response(self, contact, message, now, departing)

    def on_slow(self, pending: Pending, now: float) -> None:
        self.timeouts += 1
        if pending.node_id is not None:
            self.lookup.on_soft_timeout(pending.node_id, pending.address)
            if not self.owner.requests.resend_and_wait(pending, now):
                self.lookup.on_give_up(pending.node_id, pending.address)
            self.owner.advance(self, now)

    def on_grace_over(self, pending: Pending, now: float) -> None:
        """A slow peer used up its grace: the lookup may finish without it."""
        if pending.node_id is not None:
            self.lookup.on_give_up(pending.node_id, pending.address)
            self.owner.advance(self, now)

    def on_timeout(self, pending: Pending, now: float) -> None:
        if pending.node_id is not None:
            self.lookup.on_failure(pending.node_id, pending.address)
        self.owner.advance(self, now)


class Lookups:
    """Starts lookups and drives each one to its continuation."""

    __slots__ = ("_ctx", "_penalise", "queries", "requests")

    def __init__(
        self,
        ctx: NodeContext,
        queries: Queries,
        requests: Requests,
        penalise: Callable[[NodeId, float], None],
    ) -> None:
        self._ctx = ctx
        self.queries = queries
        self.requests = requests
        self._penalise = penalise

    def start(
        self,
        target: NodeId,
        now: float,
        *,
        want_value: bool,
        on_done: Continuation,
        qid: int | None = None,
        kind: RecordKind | None = None,
        quorum: int = 1,
        local: Record | None = None,
        holders_only: bool = False,
        paths: int | None = None,
        alpha: int | None = None,
    ) -> int:
        ctx = self._ctx
        config = ctx.config
        if qid is None:
            qid = self.queries.new_id()
        # Seed with more than k: when the closest entries turn out dead (their failures are
        # not known yet), the lookup falls back on the next ones we know instead of ending
        # with fewer than k answers. Extra seeds cost nothing unless they are needed.
        seeds = ctx.table.closest(target, 2 * config.k)
        ctx.table.touch(target, now)
        lookup = new_lookup(
            target,
            ctx.node_id,
            config.k,
            config.alpha if alpha is None else alpha,
            seeds,
            config.disjoint_paths if paths is None else paths,
        )
        query = LookupQuery(
            qid,
            lookup,
            want_value,
            self,
            on_done,
            kind=kind,
            quorum=quorum,
            local=local,
            holders_only=holders_only,
        )
        self.queries[qid] = query
        ctx.stats["lookups.started"] += 1
        self.advance(query, now)
        return qid

    def on_response(
        self,
        query: LookupQuery,
        contact: Contact,
        message: Message,
        now: float,
        departing: bool = False,
    ) -> None:
        ctx = self._ctx
        lookup = query.lookup
        # A leaving peer's answer is used (its contacts, a value it returns) but it does not
        # count among the closest: nothing is stored on it and it holds nothing for a leave.
        answered = lookup.on_departing if departing else lookup.on_response
        if isinstance(message, Nodes):
            # The decoder bounds a NODES answer at 32 contacts; we use at most k of them.
            contacts = self.acceptable(message.contacts[: ctx.config.k], contact.host)
            answered(contact.node_id, contacts, message.token, contact.address)
        elif isinstance(message, Value):
            record = message.record
            valid = record.key == lookup.target
            if valid:
                try:
                    validate_record(record, ctx.config)
                except ValidationError:
                    valid = False
                else:
                    valid = record_expiry(record, now, ctx.config) > now
            if not valid:
                # Honest storers validate what they keep: an invalid value is the peer's fault.
                ctx.stats["get.invalid_value"] += 1
                self._penalise(contact.node_id, now)
                query.holders.add(contact.node_id)  # and no copy of ours goes to it either
                answered(contact.node_id, (), message.token, contact.address)
            elif query.kind is not None and record.kind is not query.kind:
                ctx.stats["get.wrong_kind"] += 1
                answered(contact.node_id, (), message.token, contact.address)
            elif query.holders_only:
                # A leave wants to know who holds it, not just the value: keep going.
                answered(contact.node_id, (), message.token, contact.address)
                if not departing:
                    query.holders.add(contact.node_id)
            else:
                answered(contact.node_id, (), message.token, contact.address)
                if not departing:
                    query.holders.add(contact.node_id)
                query.answers.append((contact, record, message.token))
                if query.found is None or record.supersedes(query.found):
                    query.found = record
                if len(query.answers) >= query.quorum:
                    lookup.finish()
        else:  # an ERROR answer: the peer is alive but useless for this lookup
            lookup.on_failure(contact.node_id, contact.address, final=True)
        self.advance(query, now)

    def acceptable(self, contacts: tuple[Contact, ...], via: str) -> tuple[Contact, ...]:
        """The contacts of a NODES answer from host ``via`` worth asking: never unusable
        addresses (unspecified, multicast), and loopback or private ones only from a peer
        that is itself local (a public peer listing them points us at our own LAN, or
        invents them), and only if ``allow_private_addresses``."""
        local_ok = self._ctx.config.allow_private_addresses and not is_public(via)
        acceptable = is_usable if local_ok else is_public
        # The common case (every contact acceptable) in C-level iteration: this runs for
        # every contact of every NODES answer.
        if all(map(acceptable, map(_HOST, contacts))):
            return contacts
        kept = tuple(c for c in contacts if acceptable(c.host))
        if len(kept) != len(contacts):
            self._ctx.stats["lookup.contacts_refused"] += len(contacts) - len(kept)
        return kept

    def advance(self, query: LookupQuery, now: float) -> None:
        lookup = query.lookup
        if not lookup.finished:
            for contact in lookup.next_queries():
                request: Request = (
                    FindValue(lookup.target) if query.want_value else FindNode(lookup.target)
                )
                if not self.requests.send(
                    contact.address, contact.node_id, request, now, query.query_id
                ):
                    lookup.on_failure(contact.node_id, contact.address, final=True)
                    query.overloaded = True
            if query.overloaded and lookup.in_flight == 0 and lookup.slow == 0:
                # Refused by the request limit with nothing left in flight: no answer will
                # ever advance it again, so it ends here (and reports the overload).
                lookup.finish()
        if lookup.finished or lookup.is_done:
            # Answers still in flight come from outside the final k and cannot change it.
            self._finish(query, now)

    def _finish(self, query: LookupQuery, now: float) -> None:
        qid = query.query_id
        # Kept although no path reaches it today (advance runs only for a registered query:
        # from start, or from an outcome the engine found in ``queries``): it makes "on_done
        # at most once" hold even if an answer's handling some day re-enters advance for the
        # same query (a peer penalised or removed failing its requests at once, say).
        if self.queries.get(qid) is not query:
            return
        del self.queries[qid]
        lookup = query.lookup
        lookup.finish()
        query.on_done(query, lookup.closest_responded(), now)

    def failed(self, query: LookupQuery) -> bool:
        """End a user's query with :class:`QueryFailed` when its search proves nothing."""
        lookup = query.lookup
        if query.found is None and (
            query.overloaded or (lookup.responses == 0 and lookup.queries_sent > 0)
        ):
            # A search that asked peers and heard from none (or was cut short) proves nothing:
            # "not found" or "stored" would be a lie, so the caller gets a failure to retry.
            # A node that knows no peer at all is a network of one and answers from itself.
            reason = (
                "too many requests in flight; retry later"
                if query.overloaded
                else "no peer answered"
            )
            self._ctx.events.append(QueryFailed(query.query_id, reason))
            return True
        return False
