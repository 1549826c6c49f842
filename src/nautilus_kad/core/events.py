"""What the engine reports to its driver, in the order things happened.

Events that finish a command carry the ``query_id`` the command returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import NodeId
from .messages import Address, Contact, ErrorCode
from .records import Record


@dataclass(frozen=True, slots=True)
class PingDone:
    query_id: int
    contact: Contact
    rtt: float


@dataclass(frozen=True, slots=True)
class NodesAnswered:
    """One peer's answer to a single FIND_NODE (``KadEngine.find_node_at``): the contacts it
    knows closest to the target, as it sent them (a client's view of one server)."""

    query_id: int
    contact: Contact
    contacts: tuple[Contact, ...]
    rtt: float


@dataclass(frozen=True, slots=True)
class LookupDone:
    query_id: int
    target: NodeId
    contacts: tuple[Contact, ...]
    hops: int
    queries: int
    timeouts: int = 0
    """Requests it sent that passed their soft timeout and had not answered when it ended
    (dead or overloaded peers it waited on)."""


@dataclass(frozen=True, slots=True)
class GetDone:
    query_id: int
    key: NodeId
    record: Record | None
    hops: int
    queries: int
    answers: int = 0
    """Valid copies peers returned (a signed get asks a quorum of them)."""
    repaired: int = 0
    """Replicas that served an older signed record and were sent the newest one."""
    timeouts: int = 0
    """Requests it sent that passed their soft timeout and had not answered when it ended
    (dead or overloaded peers it waited on)."""


@dataclass(frozen=True, slots=True)
class PutDone:
    query_id: int
    key: NodeId
    acks: int
    stored_on: tuple[Contact, ...]
    queries: int
    errors: tuple[tuple[ErrorCode, str], ...] = ()
    """ERROR answers of the storers that refused the record (code, text)."""
    timeouts: int = 0
    """Requests of its lookup and STOREs that passed their soft timeout and had not
    answered when it ended."""


@dataclass(frozen=True, slots=True)
class BootstrapDone:
    query_id: int
    table_size: int


@dataclass(frozen=True, slots=True)
class QueryFailed:
    query_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class LeaveDone:
    """A clean leave finished handing records on (or ran out of work to do)."""

    query_id: int
    records: int
    """Records this node held when it started leaving."""
    stores_sent: int
    acks: int


@dataclass(frozen=True, slots=True)
class PeerAdded:
    contact: Contact


@dataclass(frozen=True, slots=True)
class PeerRemoved:
    contact: Contact


# --- channels (NAT traversal, core/connector.py) -------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """A channel is up: ours (``query_id`` is the connect's) or a peer's (``query_id`` 0)."""

    query_id: int
    channel: int
    """The channel's handle (our channel id)."""
    peer_id: NodeId
    path: str
    """``direct`` or ``relayed``."""
    address: Address
    """Where its datagrams go (the peer, or the relay)."""
    rtt: float | None


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    query_id: int
    code: str
    """``not_found``, ``refused``, ``timeout``, ``no_path``, ``rate_limited``, ``limit`` …"""
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelPath:
    """A channel changed path (``relayed`` → ``direct`` after a successful upgrade)."""

    channel: int
    path: str
    address: Address
    rtt: float | None


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    channel: int
    reason: str


Event = (
    PingDone
    | NodesAnswered
    | LookupDone
    | GetDone
    | PutDone
    | BootstrapDone
    | LeaveDone
    | QueryFailed
    | PeerAdded
    | PeerRemoved
    | ChannelOpened
    | ConnectFailed
    | ChannelData
    | ChannelPath
    | ChannelClosed
)
