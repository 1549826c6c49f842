"""JSON snapshots of a node's state for the API, the event stream and the page.

Each is bounded: the routing table has at most 257 buckets of k entries, records come in
pages of at most :data:`MAX_PAGE`.
"""

from __future__ import annotations

import time
from typing import Any

from ..aio.node import Node
from ..core.addresses import format_address
from ..core.ids import NodeId

MAX_PAGE = 500


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def routing_table(node: Node) -> dict[str, Any]:
    """Buckets by index (the common-prefix length with our id), with their contacts' RTT,
    last-seen age and consecutive failures."""
    table = node.routing_table
    now = time.time()
    buckets = []
    for index, entries, spares in table.buckets():
        contacts = [
            {
                "node_id": e.contact.node_id.hex(),
                "address": f"{e.contact.address[0]}:{e.contact.address[1]}",
                "srtt_ms": _ms(e.rtt.srtt),
                "rttvar_ms": _ms(e.rtt.rttvar) if e.rtt.srtt is not None else None,
                "last_seen_s": round(max(0.0, now - e.last_seen), 3),
                "failures": e.failures,
                "stale": e.is_stale,
            }
            for e in reversed(entries)  # most recently seen first
        ]
        buckets.append({"index": index, "contacts": contacts, "replacements": spares})
    return {"node_id": node.node_id.hex(), "k": table.config.k, "buckets": buckets}


def table_summary(node: Node) -> dict[str, int]:
    contacts = stale = spares = 0
    for _index, entries, replacements in node.routing_table.buckets():
        contacts += len(entries)
        stale += sum(1 for e in entries if e.is_stale)
        spares += replacements
    return {"contacts": contacts, "stale": stale, "replacements": spares}


def records(node: Node, offset: int, limit: int) -> dict[str, Any]:
    """One page of the records the node holds, ordered by key."""
    engine = node.engine
    store = engine.store
    now = time.time()
    mine = {record.key for record, _ttl in engine.published()}
    keys = sorted(store.keys())
    page = []
    for key in keys[offset : offset + limit]:
        stored = store.get(key, now)
        if stored is None:
            continue
        record = stored.record
        page.append(
            {
                "key": key.hex(),
                "kind": record.kind.name.lower(),
                "size": len(record.value),
                "expires_in_s": round(stored.expires_at - now, 1),
                "mine": key in mine,
                "seq": record.seq if record.seq else None,
            }
        )
    return {
        "total": len(store),
        "bytes": engine.stored_bytes,
        "offset": offset,
        "limit": limit,
        "records": page,
    }


def reachability(node: Node) -> dict[str, Any]:
    """Whether the node serves (issue 11): ``mode`` (client or server), ``fixed`` by
    configuration or measured, ``since_s`` (seconds in this mode), the adopted IPv4 / IPv6
    ``external`` address (``ip:port``, the IP alone behind a NAT that changes ports, or
    None), the ``nat_class`` per family, and the last probe rounds won out of those kept."""
    snap: dict[str, Any] = node.reachability
    external: dict[str, str | None] = {}
    for family, seen in snap["external"].items():
        address = seen["address"]
        external[family] = format_address(address) if address is not None else seen["ip"]
    probes = snap["last_probes"]
    return {
        "mode": snap["mode"],
        "fixed": snap["fixed"],
        "since_s": round(snap["in_mode_s"], 1),
        "external": external,
        "nat_class": snap["nat_class"],
        "probes_ok": sum(1 for p in probes if p["ok"]),
        "probes": len(probes),
    }


def short(node_id: NodeId) -> str:
    return node_id.hex()[:12]
