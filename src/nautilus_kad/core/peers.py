"""Who is in the routing table, and how we learn that a peer is alive, gone or bad.

:class:`Peers` decides what a datagram from a peer means for the table: a stranger that wrote
to us is PINGed before it may enter (its source address could be forged; the PING comes out of
the address's amplification budget), a known node writing from a new address is PINGed there,
an answer to one of our requests adds or refreshes its sender, a timeout counts against the
node at the address the table holds, and a peer that says it is leaving goes at once. While we
hold records it also PINGs our k closest neighbours that have been quiet for a check interval.

It tells replication about peers that joined or died through two callables given at
construction (``joined(contact, now)``, ``died(contact, now)``: handoff and repair scans).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable

from .amplification import AmplificationBudget
from .context import FLAG_CLIENT, FLAG_LEAVING, NodeContext
from .events import PeerAdded, PeerRemoved
from .ids import NodeId
from .jointimes import JoinTimes
from .limits import MAX_PING_BYTES
from .messages import Address, Contact, Ping
from .pending import Pending
from .replication import HeldKeys
from .rpc import Requests
from .tokens import WriteTokens

_log = logging.getLogger("nautilus_kad.engine")
_STRIKES = 4096

Listener = Callable[[Contact, float], None]


class Peers:
    """Routing-table admission, liveness checks, departures and penalties."""

    __slots__ = ("_budget", "_ctx", "_died", "_held", "_joined", "_requests", "_tokens",
                 "next_neighbour_check", "since", "strikes", "verifying")  # fmt: skip

    def __init__(
        self,
        ctx: NodeContext,
        now: float,
        requests: Requests,
        budget: AmplificationBudget,
        tokens: WriteTokens,
        held: HeldKeys,
        joined: Listener,
        died: Listener,
    ) -> None:
        self._ctx = ctx
        self._requests = requests
        self._budget = budget
        self._tokens = tokens
        self._held = held
        self._joined = joined
        self._died = died
        self.verifying: set[NodeId] = set()
        self.since = JoinTimes(ctx.table)
        """When each routing-table peer entered the table (handoff ranks holders by it)."""
        self.strikes: OrderedDict[NodeId, int] = OrderedDict()
        """Invalid values (bad signature, wrong key hash …) each peer served us, for the
        most recent offenders."""
        check = ctx.config.neighbour_check_interval
        self.next_neighbour_check = now + check * (0.5 + ctx.rng.random()) if check else math.inf

    # --- what datagrams tell us --------------------------------------------------------

    def on_request(self, sender: NodeId, address: Address, flags: int, now: float) -> None:
        """A peer sent us a (valid, authenticated) request from ``address``."""
        # A stranger's verification PING comes out of its budget first; padded requests
        # leave room for it and a full answer (see ``Wire.pad_to``).
        entry = self._ctx.table.get(sender)
        if flags & FLAG_LEAVING:
            self.departing(sender)  # serve its handoff, but it is no peer any more
        elif entry is not None and flags & FLAG_CLIENT:
            self.demoted(sender)  # it found it cannot be reached: served, as a client
        elif entry is not None and entry.contact.address == address:
            entry.last_seen = now
        elif entry is None and not flags & FLAG_CLIENT:
            self._maybe_verify(Contact(sender, address[0], address[1]), now)
        elif entry is not None and not flags & FLAG_CLIENT:
            # A known node writes from a new address (it restarted on another port, or its
            # NAT mapping changed): PING it there; its signed answer moves the entry.
            self.check_liveness(Contact(sender, address[0], address[1]), now)

    def on_answer(self, contact: Contact, flags: int, rtt: float, now: float) -> bool:
        """A peer answered one of our requests; returns whether it said it is leaving."""
        table = self._ctx.table
        departing = bool(flags & FLAG_LEAVING)
        if departing:
            self.departing(contact.node_id)
        elif not flags & FLAG_CLIENT:
            added, to_ping = table.observe(contact, now)
            if added:
                self._added(contact, now)
            if to_ping is not None:
                self.check_liveness(to_ping, now)
        elif contact.node_id in table:
            self.demoted(contact.node_id)
        table.record_rtt(contact.node_id, rtt)
        self.verifying.discard(contact.node_id)
        return departing

    def on_timeout(self, pending: Pending, now: float) -> None:
        """A request to ``pending.node_id`` failed for good."""
        node_id = pending.node_id
        if node_id is None:
            return
        self.verifying.discard(node_id)
        # A failure counts against the node only at the address the table holds for
        # it: silence at another address (one a hostile peer named it at, or a new one
        # being checked) says nothing about the node where we know it.
        table = self._ctx.table
        entry = table.get(node_id)
        if entry is not None and entry.contact.address == pending.address:
            removed = table.record_failure(node_id)
            if removed is not None:
                self._gone(removed, repair_at=now)
        elif entry is not None:
            self._ctx.stats["tx.timeouts.other_address"] += 1

    def penalise(self, node_id: NodeId, now: float) -> None:
        """``node_id`` sent us something provably bad: a strike against it (see
        :attr:`strikes`), and a failure in the routing table, as if it had not answered
        (and, should that evict it, the same consequences as a peer that died)."""
        self._ctx.stats["peer.misbehaved"] += 1
        strikes = self.strikes
        strikes[node_id] = strikes.pop(node_id, 0) + 1
        if len(strikes) > _STRIKES:
            strikes.popitem(last=False)
        removed = self._ctx.table.record_failure(node_id)
        if removed is not None:
            self._gone(removed, repair_at=now)

    # --- checks ------------------------------------------------------------------------

    def _maybe_verify(self, contact: Contact, now: float) -> None:
        """A stranger sent us a request: PING it before it may enter the table (its source
        address could be forged), but only when its bucket has room for it."""
        if contact.node_id in self.verifying or contact.node_id in self._requests.awaiting:
            return  # already being checked, or about to answer us anyway
        if len(self.verifying) >= self._ctx.config.max_pending_verifications:
            return
        if not self._ctx.table.has_room_for(contact.node_id):
            return
        self.check_liveness(contact, now)

    def check_liveness(self, contact: Contact, now: float) -> None:
        """PING ``contact`` unless a check is already under way; the answer (or its
        absence) updates the routing table. An unverified address pays the PING from its
        amplification budget; without enough left, no PING (it may ask again later)."""
        if contact.node_id in self.verifying:
            return
        address = contact.address
        if address in self._budget and self._budget.allowance(address) < MAX_PING_BYTES:
            self._ctx.stats["verify.skipped.amplification"] += 1
            return
        if self._requests.send(contact.address, contact.node_id, Ping(), now, None):
            self.verifying.add(contact.node_id)

    def check_neighbours(self, now: float) -> None:
        """PING our k closest neighbours not heard from in a check interval (only while we
        hold records: they are our records' co-holders). A dead co-holder that still looked
        alive would go on counting as the one who hands records to newcomers."""
        ctx = self._ctx
        interval = ctx.config.neighbour_check_interval
        self.next_neighbour_check = now + interval * (0.9 + 0.2 * ctx.rng.random())
        if not len(self._held) or ctx.flags & FLAG_CLIENT:
            return
        table = ctx.table
        for contact in table.closest(ctx.node_id, ctx.config.k):
            entry = table.get(contact.node_id)
            if entry is not None and now - entry.last_seen >= interval:
                ctx.stats["neighbours.checked"] += 1
                self.check_liveness(contact, now)

    def prune(self) -> None:
        """Forget join times of peers no longer in the table."""
        self.since.prune()

    # --- arrivals and departures -------------------------------------------------------

    def departing(self, node_id: NodeId) -> None:
        """A peer said it is leaving: out of the table now, a spare in its place. No repair
        scan: a clean leaver hands its records on itself."""
        removed = self._ctx.table.depart(node_id)
        if removed is not None:
            self._ctx.stats["peer.departed"] += 1
            self._gone(removed, repair_at=None)

    def demoted(self, node_id: NodeId) -> None:
        """A peer of our table now sends with the client flag (its probes failed, or its
        address changed): it is no server any more. Out of the table, a spare in its place;
        no repair scan (it still answers; the holders' checks find what it no longer
        keeps)."""
        removed = self._ctx.table.depart(node_id)
        if removed is not None:
            self._ctx.stats["peer.demoted"] += 1
            self._gone(removed, repair_at=None)

    def _added(self, contact: Contact, now: float) -> None:
        self._ctx.events.append(PeerAdded(contact))
        self.since[contact.node_id] = now
        if _log.isEnabledFor(logging.INFO):
            _log.info("peer %s joined the routing table", contact)
        if len(self._held):
            self._joined(contact, now)

    def _gone(self, contact: Contact, *, repair_at: float | None) -> None:
        """The one way a peer leaves the routing table (it died, misbehaved, left or became
        a client): forget its token and join time; when it died or misbehaved
        (``repair_at``: now), the records it held with us need a prompt repair. A clean
        leaver hands its records on itself; a demoted peer still answers."""
        self._ctx.events.append(PeerRemoved(contact))
        self._tokens.forget(contact.node_id)
        self.since.pop(contact.node_id, None)
        if repair_at is not None and len(self._held):
            self._died(contact, repair_at)
