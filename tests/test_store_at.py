"""``KadEngine.store_at``: STORE on known nodes without a lookup (what large values use).

A lookup's write tokens are bound to our address, not to its key, so the nodes one lookup
found can be given any record right after it.
"""

from __future__ import annotations

import pytest
from enginenet import build

from nautilus_kad.core.config import KadConfig
from nautilus_kad.core.errors import ValidationError
from nautilus_kad.core.events import GetDone, LookupDone, PutDone
from nautilus_kad.core.ids import key_id
from nautilus_kad.core.messages import Contact
from nautilus_kad.core.records import Record, make_immutable

K = 4
CONFIG = KadConfig(k=K)


def test_store_at_uses_the_tokens_a_lookup_for_another_key_brought() -> None:
    net, engines = build(12, CONFIG, seed=5)
    writer = engines[3]
    record = make_immutable(b"a piece of something larger", 3600)
    writer.find_node(record.key, net.now)  # the lookup targets the piece's key ...
    net.deliver()
    (found,) = net.take(writer, LookupDone)
    assert isinstance(found, LookupDone)
    other = make_immutable(b"another piece, whose key nobody looked up", 3600)
    sent_before = len(net.sent)
    for rec in (record, other):
        writer.store_at(rec, found.contacts, net.now)  # ... its tokens serve both
        net.deliver()
    done = net.take(writer, PutDone)
    assert [d.acks for d in done if isinstance(d, PutDone)] == [K, K]
    assert len(net.sent) - sent_before <= 4 * K  # a STORE and its answer per node, no lookup
    holders = {e.node_id for e in net.holders(other.key)}
    assert {c.node_id for c in found.contacts} <= holders | {writer.node_id}


def test_store_at_skips_contacts_that_gave_no_token() -> None:
    net, engines = build(8, CONFIG, seed=6)
    writer = engines[0]
    stranger = engines[7]
    assert stranger.address is not None
    contact = Contact(stranger.node_id, *stranger.address)
    record = make_immutable(b"x", 3600)
    writer.store_at(record, [contact], net.now)
    net.deliver()
    (done,) = net.take(writer, PutDone)
    assert isinstance(done, PutDone)
    assert writer.stats["put.no_token"] == 1
    assert stranger.store.get(record.key, net.now) is None
    # fewer than k targets: the writer keeps a copy itself, as a put would
    assert done.acks == 1 and done.stored_on[0].node_id == writer.node_id


def test_a_get_with_alpha_1_asks_one_node_when_it_holds_the_value() -> None:
    net, engines = build(12, CONFIG, seed=7)
    record = make_immutable(b"piece", 3600)
    engines[2].put(record, net.now)
    net.deliver()
    reader = next(e for e in engines if e.store.get(record.key, net.now) is None)
    for alpha, most in ((1, 1), (None, CONFIG.alpha)):
        sent = reader.stats["tx.request.FIND_VALUE"]
        reader.get(record.key, net.now, alpha=alpha)
        net.deliver()
        (done,) = net.take(reader, GetDone)
        assert isinstance(done, GetDone) and done.record == record
        assert reader.stats["tx.request.FIND_VALUE"] - sent <= most
    assert reader.stats["tx.request.FIND_VALUE"] - sent == CONFIG.alpha  # the default asks three


def test_store_at_refuses_an_expired_record_and_can_make_us_its_publisher() -> None:
    net, engines = build(6, KadConfig(k=4), seed=9)
    writer = engines[1]
    expired = Record(key_id(b"expired"), b"v", int((net.now - 7200) * 1000), 60)
    with pytest.raises(ValidationError):
        writer.store_at(expired, [], net.now)
    record = net.record(key_id(b"published"), b"v")
    others = [Contact(e.node_id, *net.address_of(e)) for e in engines if e is not writer]
    done = net.wait_for(writer, writer.store_at(record, others, net.now, republish=True))
    assert isinstance(done, PutDone)
    assert [r for r, _ in writer.published()] == [record]
