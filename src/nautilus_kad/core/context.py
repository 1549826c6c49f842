"""What every component of the engine shares: the node's ambient state.

:class:`~nautilus_kad.core.engine.KadEngine` is a facade over small components (wire, rpc,
tokens, holdings, lookups, replication …). They all read the same configuration, sign with
the same authenticator, count into the same statistics and report into the same event queue;
this object carries those (the aioquic pattern of handing each helper its logger), and nothing
else. Drivers and tests may replace ``config``, ``auth``, ``store``, ``sessions`` and
``address`` after construction through the engine's properties: they land here, so every
component sees the new value at once.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Generic, TypeVar, overload

from .auth import Authenticator
from .config import KadConfig
from .events import Event
from .fifo import Fifo
from .identity import Identity
from .ids import NodeId
from .messages import Address
from .routing import RoutingTable
from .session_table import SessionTable
from .storage import RecordStore

FLAG_CLIENT = 0x01
"""Sender flag: the sender does not accept requests (client mode); keep it out of tables."""
FLAG_LEAVING = 0x02
"""Sender flag: the sender is shutting down cleanly and handing its records on. Receivers drop
it from their tables at once, and lookups use its answers' contacts but neither store on it
nor count it as a holder: several holders of one record leaving at the same time would
otherwise each count the others as keeping it, and hand it to nobody."""


class NodeContext:
    """The node's shared state (see the module docstring)."""

    __slots__ = (
        "address",
        "auth",
        "config",
        "events",
        "flags",
        "identity",
        "node_id",
        "observed_address",
        "rng",
        "sessions",
        "stats",
        "store",
        "table",
    )

    def __init__(
        self,
        identity: Identity,
        config: KadConfig,
        rng: random.Random,
        auth: Authenticator,
        sessions: SessionTable,
        table: RoutingTable,
        store: RecordStore,
        flags: int,
    ) -> None:
        self.identity = identity
        self.node_id: NodeId = identity.node_id
        self.config = config
        self.rng = rng
        self.auth = auth
        self.sessions = sessions
        self.table = table
        self.store = store
        self.flags = flags
        self.stats: Counter[str] = Counter()
        self.events: Fifo[Event] = Fifo()
        """What the driver polls (``next_event``): empty between two datagrams nearly
        always, so no 760-byte deque block is kept for it."""
        self.observed_address: Address | None = None
        """Our address as the last peer to answer us saw it."""
        self.address: Address | None = None
        """Our bound address, set by the driver once known."""


T = TypeVar("T")


class Shared(Generic[T]):
    """A facade attribute that reads and writes the :class:`NodeContext` field of the same
    name (``obj._ctx.<name>``): what a driver assigns to the engine, every component sees."""

    __slots__ = ("_name",)

    def __init__(self) -> None:
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Shared[T]: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...
    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj._ctx, self._name)

    def __set__(self, obj: Any, value: T) -> None:
        setattr(obj._ctx, self._name, value)
