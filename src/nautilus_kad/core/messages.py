"""Protocol messages as frozen dataclasses: pure data, no encoding.

The wire layout of each lives in :mod:`nautilus_kad.core.codec`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    BadSignatureError,
    CasMismatchError,
    KadError,
    QueryError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
)
from .ids import NodeId
from .records import Record

if TYPE_CHECKING:
    from .session import Handshake, Session

Address = tuple[str, int]
"""A UDP endpoint as (textual IP, port)."""


@dataclass(frozen=True, slots=True)
class Contact:
    """A peer as other nodes learn of it: its id and UDP address."""

    node_id: NodeId
    host: str
    port: int

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.node_id.short()}@{self.host}:{self.port}"


class MessageType(enum.IntEnum):
    PING = 0x01
    FIND_NODE = 0x02
    FIND_VALUE = 0x03
    STORE = 0x04
    DIALBACK = 0x05
    """Reachability test, A → helper B (see core/natwire.py)."""
    PROBE_RELAY = 0x06
    """Reachability test, helper B → prober C."""
    PROBE = 0x07
    """Reachability test, prober C → A: never answered."""
    REGISTER = 0x08
    """NAT traversal: a client registers with (and keeps its mapping open at) a rendezvous."""
    CONNECT = 0x09
    """NAT traversal: ask a rendezvous (or the target itself) to introduce us."""
    FORWARD = 0x0A
    """NAT traversal: the rendezvous hands a CONNECT's sealed offer to the registered target."""
    PONG = 0x81
    NODES = 0x82
    VALUE = 0x83
    STORED = 0x84
    ERROR = 0x85
    DIALBACK_REPLY = 0x86
    PROBE_RELAY_REPLY = 0x87
    REGISTER_REPLY = 0x88
    CONNECT_REPLY = 0x89
    FORWARD_REPLY = 0x8A

    @property
    def is_request(self) -> bool:
        return self < 0x80


class ErrorCode(enum.IntEnum):
    BAD_TOKEN = 1
    INVALID_RECORD = 2
    STALE_RECORD = 3
    STORE_FULL = 4
    SERVER_ERROR = 5
    CAS_MISMATCH = 6
    BAD_SIGNATURE = 7
    STALE_SEQUENCE = 8
    QUOTA_EXCEEDED = 9
    """The sender's address already had this node store ``max_records_per_source`` records."""


def error_for(code: ErrorCode, text: str) -> KadError:
    """The exception a client raises for a storer's ERROR answer."""
    detail = f"{text} ({code.name})" if text else code.name
    match code:
        case ErrorCode.CAS_MISMATCH:
            return CasMismatchError(f"compare-and-swap failed: {detail}")
        case ErrorCode.STALE_SEQUENCE:
            return StaleSequenceError(f"stale sequence number: {detail}")
        case ErrorCode.BAD_SIGNATURE:
            return BadSignatureError(f"bad signature: {detail}")
        case ErrorCode.STALE_RECORD:
            return RecordConflictError(f"a newer record is stored: {detail}")
        case ErrorCode.QUOTA_EXCEEDED:
            return QueryError(f"storage quota exceeded: {detail}")
        case ErrorCode.INVALID_RECORD:
            return ValidationError(f"record refused: {detail}")
    return QueryError(f"store refused: {detail}")


# --- requests --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    TYPE = MessageType.PING


@dataclass(frozen=True, slots=True)
class FindNode:
    target: NodeId
    TYPE = MessageType.FIND_NODE


@dataclass(frozen=True, slots=True)
class FindValue:
    key: NodeId
    TYPE = MessageType.FIND_VALUE


@dataclass(frozen=True, slots=True)
class Store:
    """Store ``record``; ``expected_seq`` (signed records only) makes it a compare-and-swap:
    refused with CAS_MISMATCH when the storer holds a newer sequence number than that."""

    record: Record
    token: bytes
    expected_seq: int | None = None
    TYPE = MessageType.STORE


# --- responses: each carries the requester's address as the responder saw it ------------


@dataclass(frozen=True, slots=True)
class Pong:
    observed: Address
    TYPE = MessageType.PONG


@dataclass(frozen=True, slots=True)
class Nodes:
    observed: Address
    token: bytes
    contacts: tuple[Contact, ...]
    TYPE = MessageType.NODES


@dataclass(frozen=True, slots=True)
class Value:
    observed: Address
    token: bytes
    record: Record
    TYPE = MessageType.VALUE


@dataclass(frozen=True, slots=True)
class Stored:
    observed: Address
    TYPE = MessageType.STORED


@dataclass(frozen=True, slots=True)
class Error:
    observed: Address
    code: ErrorCode
    message: str
    TYPE = MessageType.ERROR


# --- the reachability test (core/natwire.py has their wire forms and the protocol) --------


class ProbeStatus(enum.IntEnum):
    ARRANGED = 0
    """Helper: a prober agreed to probe you. Prober: the probe is on its way."""
    RATE_LIMITED = 1
    """Too many requests from you (or in total) this period."""
    NO_PROBER = 2
    """The helper knows no suitable third node."""
    REFUSED = 3
    """Not a request this node serves (e.g. a relay from a node outside its table)."""
    FAILED = 4
    """The prober the helper asked did not answer."""


@dataclass(frozen=True, slots=True)
class Dialback:
    """A → B: please have a third node probe me where you see me."""

    nonce: bytes
    TYPE = MessageType.DIALBACK


@dataclass(frozen=True, slots=True)
class ProbeRelay:
    """B → C: please probe ``target`` (the address B saw a DIALBACK come from)."""

    nonce: bytes
    target: Address
    TYPE = MessageType.PROBE_RELAY


@dataclass(frozen=True, slots=True)
class Probe:
    """C → A: the unsolicited datagram itself, echoing A's nonce. Never answered."""

    nonce: bytes
    TYPE = MessageType.PROBE


@dataclass(frozen=True, slots=True)
class DialbackReply:
    observed: Address
    status: ProbeStatus
    TYPE = MessageType.DIALBACK_REPLY


@dataclass(frozen=True, slots=True)
class ProbeRelayReply:
    observed: Address
    status: ProbeStatus
    TYPE = MessageType.PROBE_RELAY_REPLY


# --- NAT traversal (core/connectwire.py has their wire forms, docs/nat.md the protocol) ---


class TraversalStatus(enum.IntEnum):
    """Outcome codes of REGISTER, CONNECT and FORWARD (and of relay reservations)."""

    OK = 0
    NOT_FOUND = 1
    """No registration (reservation) for that node here."""
    REFUSED = 2
    """The target's allow/deny hook refused the connection."""
    RATE_LIMITED = 3
    """Too many requests from your IP (or in total) this period."""
    NOT_SERVER = 4
    """This node is a client: it neither registers nor relays anyone."""
    RESERVATION_REFUSED = 5
    """The rendezvous holds its maximum of registrations."""
    IP_LIMIT = 6
    """Too many registrations from your IP here."""
    RESOURCE_LIMIT = 7
    """No circuit: too many circuits in total or for that peer."""
    NO_ANSWER = 8
    """The target did not answer the forwarded offer in time."""
    BAD_OFFER = 9
    """The sealed offer did not verify, was stale, replayed or not for this node."""
    NO_RELAY = 10
    """No circuit was asked for, or relaying is switched off here."""


@dataclass(frozen=True, slots=True)
class Register:
    """Client → rendezvous: keep my mapping (the address this arrives from) for a lease.
    Sent again every keepalive interval: it is also the keepalive."""

    TYPE = MessageType.REGISTER


@dataclass(frozen=True, slots=True)
class RegisterReply:
    observed: Address
    status: TraversalStatus
    lease: int
    """Seconds the rendezvous keeps the registration without another REGISTER."""
    TYPE = MessageType.REGISTER_REPLY


@dataclass(frozen=True, slots=True)
class Connect:
    """Initiator → rendezvous (or → the target, when it is a server): introduce me to
    ``target``. ``offer`` is sealed by the initiator (core/introduction.py); ``relay`` asks
    for a circuit as well."""

    target: NodeId
    offer: bytes
    relay: bool
    TYPE = MessageType.CONNECT


@dataclass(frozen=True, slots=True)
class ConnectReply:
    observed: Address
    status: TraversalStatus
    answer: bytes
    """The target's sealed answer (empty unless ``status`` is OK)."""
    peer: Address | None
    """Where the rendezvous sees the target (None when the target answered itself)."""
    circuit: int
    """The initiator's circuit id at this relay (0: none, see ``relay_status``)."""
    relay_status: TraversalStatus
    TYPE = MessageType.CONNECT_REPLY


@dataclass(frozen=True, slots=True)
class Forward:
    """Rendezvous → registered target: an initiator's sealed offer, the address the
    rendezvous saw it come from, and the target's circuit id (0: none)."""

    offer: bytes
    source: Address
    circuit: int
    TYPE = MessageType.FORWARD


@dataclass(frozen=True, slots=True)
class ForwardReply:
    observed: Address
    status: TraversalStatus
    answer: bytes
    TYPE = MessageType.FORWARD_REPLY


Request = Ping | FindNode | FindValue | Store
Response = Pong | Nodes | Value | Stored | Error
NatRequest = Dialback | ProbeRelay | Probe
NatResponse = DialbackReply | ProbeRelayReply
NatMessage = NatRequest | NatResponse
TraversalRequest = Register | Connect | Forward
TraversalResponse = RegisterReply | ConnectReply | ForwardReply
TraversalMessage = TraversalRequest | TraversalResponse
AnyRequest = Request | NatRequest | TraversalRequest
Message = Request | Response | NatMessage | TraversalMessage


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded, authenticated datagram.

    ``handshake`` is the session offer or accept a signed datagram carried; ``session`` is the
    session a session datagram arrived in (None for signed datagrams).
    """

    txid: bytes
    sender_id: NodeId
    sender_key: bytes
    flags: int
    message: Message
    handshake: Handshake | None = None
    session: Session | None = None


# --- fast builders for the datagram path ------------------------------------------------
# A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which
# costs about twice as much as setting its slots directly. The decoder builds a contact per
# contact of every NODES answer and an envelope per datagram, so these two are built here
# slot by slot from values the caller already checked: the objects are the same (equal,
# same hash, just as immutable afterwards).

_object_new = object.__new__
_contact_slots: dict[str, Any] = dict(vars(Contact))
_set_contact_id = _contact_slots["node_id"].__set__
_set_contact_host = _contact_slots["host"].__set__
_set_contact_port = _contact_slots["port"].__set__
_nodes_slots: dict[str, Any] = dict(vars(Nodes))
_set_nodes_observed = _nodes_slots["observed"].__set__
_set_nodes_token = _nodes_slots["token"].__set__
_set_nodes_contacts = _nodes_slots["contacts"].__set__
_envelope_slots: dict[str, Any] = dict(vars(Envelope))
_set_txid = _envelope_slots["txid"].__set__
_set_sender_id = _envelope_slots["sender_id"].__set__
_set_sender_key = _envelope_slots["sender_key"].__set__
_set_flags = _envelope_slots["flags"].__set__
_set_message = _envelope_slots["message"].__set__
_set_handshake = _envelope_slots["handshake"].__set__
_set_session = _envelope_slots["session"].__set__


def new_contact(node_id: NodeId, host: str, port: int) -> Contact:
    """``Contact(node_id, host, port)``, for checked values, in half the time."""
    contact: Contact = _object_new(Contact)
    _set_contact_id(contact, node_id)
    _set_contact_host(contact, host)
    _set_contact_port(contact, port)
    return contact


def new_nodes(observed: Address, token: bytes, contacts: tuple[Contact, ...]) -> Nodes:
    """``Nodes(observed, token, contacts)``, for checked values, in half the time (one is
    built for every FIND answered and every NODES received)."""
    nodes: Nodes = _object_new(Nodes)
    _set_nodes_observed(nodes, observed)
    _set_nodes_token(nodes, token)
    _set_nodes_contacts(nodes, contacts)
    return nodes


def new_envelope(
    txid: bytes,
    sender_id: NodeId,
    sender_key: bytes,
    flags: int,
    message: Message,
    handshake: Handshake | None = None,
    session: Session | None = None,
) -> Envelope:
    """``Envelope(...)``, for checked values, in half the time."""
    envelope: Envelope = _object_new(Envelope)
    _set_txid(envelope, txid)
    _set_sender_id(envelope, sender_id)
    _set_sender_key(envelope, sender_key)
    _set_flags(envelope, flags)
    _set_message(envelope, message)
    _set_handshake(envelope, handshake)
    _set_session(envelope, session)
    return envelope
