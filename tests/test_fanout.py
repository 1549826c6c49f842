"""The one STORE fan-out (core/fanout.py): every STORE a node sends has one owner and one set
of rules, whatever it is for (put, store_at, get write-back, caching, republish, handoff,
repair, leave)."""

from __future__ import annotations

import random

from enginenet import EngineNet

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import decode_datagram
from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.events import GetDone, PutDone
from nautilus_kad.core.fanout import FANOUT_QID
from nautilus_kad.core.identity import Identity
from nautilus_kad.core.ids import key_id
from nautilus_kad.core.messages import Address, Contact, Store
from nautilus_kad.core.records import Record

SIGNED_ONLY = KadConfig(sessions=False)
"""Every datagram signed, so the test can read each one."""
_READER = Authenticator(Identity.generate(random.Random(7)))


def _is_store(data: bytes) -> bool:
    return isinstance(decode_datagram(data, _READER).message, Store)


def _net(size: int, seed: int) -> EngineNet:
    net = EngineNet(size, config=SIGNED_ONLY, seed=seed)
    net.join_all()
    return net


def test_a_cache_store_lost_once_is_sent_again() -> None:
    """Caching a found value used to be fire-and-forget: one lost datagram and the closest
    node that lacked the value never got it. Now it is a STORE like any other: re-sent once
    when it is slow, and its answer read."""
    net = _net(30, seed=61)
    engines = list(net.engines.values())
    record = Record(key_id(b"cache-after-loss"), b"v", int(net.now * 1000), 3600)
    ranked = sorted(engines, key=lambda e: e.node_id ^ record.key)
    holder, reader, nearest = ranked[14], ranked[-1], ranked[0]
    assert holder.holdings.accept(record, None, net.now, validate=False)[0] is None
    dropped: list[Address] = []

    def lose_first_store(data: bytes, source: Address, destination: Address) -> bytes | None:
        if source == net.address_of(reader) and not dropped and _is_store(data):
            dropped.append(destination)
            return None
        return data

    net.filter = lose_first_store
    got = net.wait_for(reader, reader.get(record.key, net.now))
    assert isinstance(got, GetDone) and got.record == record
    assert dropped == [net.address_of(nearest)]
    assert nearest.store.get(record.key, net.now) is None  # the first copy was lost
    net.advance(5.0)
    cached = nearest.store.get(record.key, net.now)
    assert cached is not None and cached.record == record
    assert reader.stats["store.slow"] == 1


def test_every_store_is_owned_by_the_fanout() -> None:
    """Puts, store_at, caching and leave: every STORE request in flight belongs to the one
    owner (none is sent with no owner, none under a query of its own)."""
    net = _net(24, seed=62)
    engines = list(net.engines.values())
    owners: list[int | None] = []

    def watch(data: bytes, source: Address, destination: Address) -> bytes | None:
        engine = net.engines[source]
        for pending in engine.requests.pending.values():
            if isinstance(pending.request, Store) and pending.address == destination:
                owners.append(pending.query_id)
        return data

    net.filter = watch
    writer: KadEngine = engines[3]
    record = Record(key_id(b"owned"), b"v", int(net.now * 1000), 3600)
    done = net.wait_for(writer, writer.put(record, net.now))
    assert isinstance(done, PutDone) and done.acks >= 10
    far = Record(key_id(b"owned-elsewhere"), b"w", int(net.now * 1000), 3600)
    ranked = sorted(engines, key=lambda e: e.node_id ^ far.key)
    target = ranked[-1]
    contact = Contact(target.node_id, *net.address_of(target))
    done = net.wait_for(writer, writer.store_at(far, [contact], net.now))
    assert isinstance(done, PutDone) and contact in done.stored_on
    reader = ranked[0]
    got = net.wait_for(reader, reader.get(far.key, net.now))
    assert isinstance(got, GetDone) and got.record == far  # and cached on the way
    leaver = ranked[-1]
    leaver.leave(net.now)
    net.advance(10.0)
    assert len(owners) >= 12
    assert set(owners) == {FANOUT_QID}
    assert all(e.replication_backlog == 0 for e in engines)
