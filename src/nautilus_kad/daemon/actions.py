"""The daemon's actions (POST, bearer token): put, get, ping, lookup.

Bodies are JSON with binary fields as hex; results reuse the command line's shapes. Every
field is checked before the node is asked anything: a bad request is a 400 with a one-line
message, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..aio.node import Node
from ..core.addresses import AddressError, format_address, parse_address
from ..core.blob import BlobConfig
from ..core.identity import PUBLIC_KEY_BYTES, Identity
from ..core.ids import NodeId, distance, key_id
from ..core.limits import MAX_SALT_BYTES, MAX_SEQ
from ..core.messages import Contact
from ..core.records import RecordKind, immutable_key, signed_key
from .activity import Activity

MAX_VALUE = BlobConfig().max_size
"""The largest value an action carries: what the command line puts (stored in pieces when it
is over the inline limit)."""
KINDS = {"open": RecordKind.OPEN, "immutable": RecordKind.IMMUTABLE, "signed": RecordKind.SIGNED}


class BadRequestError(Exception):
    """A malformed action body (HTTP 400)."""


def _field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequestError(f"missing field {name!r}")
        return None
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise BadRequestError(f"field {name!r} must be {kind.__name__}")
    return value


def _hex(body: dict[str, Any], name: str, size: int | None = None) -> bytes:
    text: str = _field(body, name, str)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BadRequestError(f"field {name!r} is not hex") from None
    if size is not None and len(raw) != size:
        raise BadRequestError(f"field {name!r} must be {size} bytes")
    return raw


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value: int | None = _field(body, name, int, required=False)
    if value is not None and not low <= value <= high:
        raise BadRequestError(f"field {name!r} must be in [{low}, {high}]")
    return value


def _kind(body: dict[str, Any]) -> RecordKind:
    name = _field(body, "kind", str, required=False) or "open"
    if name not in KINDS:
        raise BadRequestError(f"field 'kind' must be one of {', '.join(KINDS)}")
    return KINDS[name]


async def put(node: Node, activity: Activity, body: dict[str, Any]) -> dict[str, Any]:
    kind = _kind(body)
    value = _hex(body, "value")
    if len(value) > MAX_VALUE:
        raise BadRequestError(f"{len(value)} bytes is more than the {MAX_VALUE}-byte limit")
    ttl = _int(body, "ttl", 1, 1 << 31)
    if kind is RecordKind.IMMUTABLE:
        cid = await activity.run("put", immutable_key(value), node.put_immutable(value, ttl=ttl))
        return {"key": cid.hex()}
    if kind is RecordKind.SIGNED:
        name = _hex(body, "name")
        if len(name) > MAX_SALT_BYTES:
            raise BadRequestError(f"a name is at most {MAX_SALT_BYTES} bytes")
        seq = _int(body, "seq", 0, MAX_SEQ)
        cas = _int(body, "cas", 0, MAX_SEQ)
        owner = _owner(body)
        identity = owner or node.engine.identity
        target = signed_key(identity.public_key, name)
        done = await activity.run(
            "put",
            target,
            node.put_signed_record(name, value, seq=seq, cas=cas, ttl=ttl, owner=owner),
        )
        return {
            "key": done.key.hex(),
            "owner": identity.public_key.hex(),
            "seq": done.seq,
            "acks": done.acks,
            "piece_acks": list(done.piece_acks),
        }
    key = _hex(body, "key")
    result = await activity.run("put", key_id(key), node.put(key, value, ttl=ttl))
    return {"key": result.key.hex(), "acks": result.acks, "piece_acks": list(result.piece_acks)}


def _owner(body: dict[str, Any]) -> Identity | None:
    path = _field(body, "key_file", str, required=False)
    if path is None:
        return None
    try:
        return Identity.load(Path(path))
    except Exception as exc:
        raise BadRequestError(f"cannot load key file {path}: {type(exc).__name__}") from None


async def get(node: Node, activity: Activity, body: dict[str, Any]) -> dict[str, Any]:
    kind = _kind(body)

    def found(value: Any) -> str:
        return "not_found" if value is None or getattr(value, "record", 1) is None else "ok"

    if kind is RecordKind.SIGNED:
        owner = _hex(body, "owner", PUBLIC_KEY_BYTES)
        name = _hex(body, "name")
        target = signed_key(owner, name)
        signed = await activity.run("get", target, node.get_signed(owner, name), found)
        if signed is None:
            return {"found": False}
        return {"found": True, "value": signed.value.hex(), "seq": signed.seq}
    if kind is RecordKind.IMMUTABLE:
        target = NodeId.from_bytes_exact(_hex(body, "key", 32))
        value = await activity.run("get", target, node.get_immutable(target), found)
        return {"found": value is not None, "value": None if value is None else value.hex()}
    key = _hex(body, "key")
    result = await activity.run("get", key_id(key), node.get_record(key), found)
    record = result.record
    return {
        "found": record is not None,
        "value": None if record is None else record.value.hex(),
        "hops": result.hops,
        "queries": result.queries,
    }


async def ping(node: Node, activity: Activity, body: dict[str, Any]) -> dict[str, Any]:
    text = _field(body, "address", str)
    try:
        address = parse_address(text)
    except AddressError as exc:
        raise BadRequestError(str(exc)) from None
    result = await activity.run("ping", None, node.ping(address))
    return {
        "node_id": result.contact.node_id.hex(),
        "address": format_address(result.contact.address),
        "rtt_ms": round(result.rtt * 1000, 3),
    }


async def lookup(node: Node, activity: Activity, body: dict[str, Any]) -> dict[str, Any]:
    """The k nodes closest to the target, this node included when it is one of them (it is
    a node of the network too; a lookup never lists the node that runs it)."""
    target = NodeId.from_bytes_exact(_hex(body, "target", 32))
    found = await activity.run("lookup", target, node.find_node(target))
    me = Contact(node.node_id, *node.address)
    ranked = sorted([*found, me], key=lambda c: distance(target, c.node_id))
    k = node.engine.config.k
    return {
        "contacts": [
            {
                "node_id": c.node_id.hex(),
                "address": format_address(c.address),
                "distance_bits": distance(target, c.node_id).bit_length(),
            }
            for c in ranked[:k]
        ]
    }
