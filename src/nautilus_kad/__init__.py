"""nautilus-kad: an authenticated Kademlia DHT.

The public API::

    import nautilus_kad

    async with await nautilus_kad.Node.start(port=0, bootstrap=["127.0.0.1:7400"]) as node:
        await node.put(b"my-key", b"value")
        assert await node.get(b"my-key") == b"value"
"""

from .aio.channels import MAX_CHANNEL_PAYLOAD, Channel
from .aio.node import GetResult, Node, PingResult, PutResult, SignedPutResult
from .core.config import KadConfig
from .core.engine import KadEngine
from .core.errors import (
    BadSignatureError,
    CasMismatchError,
    ChannelClosedError,
    ConnectError,
    DecodeError,
    KadError,
    NoPeersError,
    QueryError,
    QueryTimeoutError,
    RecordConflictError,
    StaleSequenceError,
    ValidationError,
    ValueTooLargeError,
)
from .core.identity import Identity
from .core.ids import NodeId, key_id
from .core.messages import Contact
from .core.records import Record, RecordKind, SignedRecord, immutable_key, signed_key

__version__ = "0.1.0"

__all__ = [
    "MAX_CHANNEL_PAYLOAD",
    "BadSignatureError",
    "CasMismatchError",
    "Channel",
    "ChannelClosedError",
    "ConnectError",
    "Contact",
    "DecodeError",
    "GetResult",
    "Identity",
    "KadConfig",
    "KadEngine",
    "KadError",
    "NoPeersError",
    "Node",
    "NodeId",
    "PingResult",
    "PutResult",
    "QueryError",
    "QueryTimeoutError",
    "Record",
    "RecordConflictError",
    "RecordKind",
    "SignedPutResult",
    "SignedRecord",
    "StaleSequenceError",
    "ValidationError",
    "ValueTooLargeError",
    "__version__",
    "immutable_key",
    "key_id",
    "signed_key",
]
