"""``/metrics``: the node in the Prometheus text format, one registry per node.

Counters and gauges are read from the node's own bookkeeping (``Node.stats``, the routing
table, the store) when Prometheus scrapes, by a custom collector, so nothing is counted
twice. Histograms are real ``Histogram`` objects fed as things happen: each finished
operation (duration, hops, requests per query) and every round-trip time the routing table
samples. Names follow Prometheus' conventions: the ``nautilus_kad_`` prefix, base units
(seconds, bytes), ``_total`` on counters, and no peer or key labels (unbounded cardinality).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..aio.node import Node
from .activity import Operation

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series next to every counter

P = "nautilus_kad_"
KINDS = ("ping", "lookup", "get", "put", "bootstrap")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HOP_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TIMEOUT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64)
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class NodeMetrics:
    """The registry of one node, with the histograms and counters fed as events happen."""

    def __init__(
        self,
        node: Node,
        in_flight: Callable[[], dict[str, int]],
        api_refused: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_NodeCollector(node, in_flight, time.time(), api_refused))
        self.queries = Counter(
            P + "queries",
            "Queries this node ran for its user, by kind and result (ok, not_found, failed).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            P + "query_duration_seconds",
            "Time from start to result of this node's queries.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.hops = Histogram(
            P + "query_hops",
            "Hops of this node's lookups (the depth of the closest answer's referral chain).",
            ["kind"],
            buckets=HOP_BUCKETS,
            registry=self.registry,
        )
        self.requests = Histogram(
            P + "query_requests",
            "Requests sent by each of this node's queries.",
            ["kind"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.timeouts = Histogram(
            P + "query_timeouts",
            "Requests of each of this node's queries that timed out (no answer by its end).",
            ["kind"],
            buckets=TIMEOUT_BUCKETS,
            registry=self.registry,
        )
        self.rtt = Histogram(
            P + "rpc_rtt_seconds",
            "Round-trip time of every answered request.",
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self.table_changes = Counter(
            P + "routing_table_changes",
            "Contacts added to and removed from the routing table.",
            ["action"],
            registry=self.registry,
        )
        for action in ("added", "removed"):
            self.table_changes.labels(action)
        for kind in KINDS:
            self.queries.labels(kind, "ok")

    def operation_done(self, op: Operation) -> None:
        kind = op.kind
        self.queries.labels(kind, op.result or "failed").inc()
        if op.seconds is not None:
            self.duration.labels(kind).observe(op.seconds)
        if op.hops is not None:
            self.hops.labels(kind).observe(op.hops)
        if op.requests is not None:
            self.requests.labels(kind).observe(op.requests)
        if op.timeouts is not None:
            self.timeouts.labels(kind).observe(op.timeouts)


def _labelled(stats: dict[str, float], prefix: str) -> Iterator[tuple[str, float]]:
    for key, value in stats.items():
        if key.startswith(prefix):
            yield key[len(prefix) :].lower(), value


class _NodeCollector(Collector):
    """Counters and gauges read from the node at scrape time."""

    def __init__(
        self,
        node: Node,
        in_flight: Callable[[], dict[str, int]],
        started: float,
        api_refused: Callable[[], dict[str, int]],
    ):
        self._node = node
        self._in_flight = in_flight
        self._started = started
        self._api_refused = api_refused

    def collect(self) -> Iterator[Metric]:
        node = self._node
        stats = node.stats
        yield from _counters(stats)
        refused = CounterMetricFamily(
            P + "api_requests_refused",
            "Local API requests refused, by reason (host, origin, token, method).",
            labels=["reason"],
        )
        counts = self._api_refused()
        for reason in ("host", "origin", "token", "method"):
            refused.add_metric([reason], counts.get(reason, 0))
        yield refused
        yield from _gauges(node, stats, self._in_flight(), self._started)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(P + name, doc, value=value)


def _counters(stats: dict[str, float]) -> Iterator[Metric]:
    get = stats.get
    yield _counter("datagrams_received", "UDP datagrams received.", get("rx.datagrams", 0))
    yield _counter("datagrams_sent", "UDP datagrams sent.", get("tx.datagrams", 0))
    yield _counter("received_bytes", "Bytes of UDP payload received.", get("rx.bytes", 0))
    yield _counter("sent_bytes", "Bytes of UDP payload sent.", get("tx.bytes", 0))
    families: list[tuple[str, str, str, str]] = [
        ("requests_received", "Requests received, by type.", "type", "rx.request."),
        ("requests_sent", "Requests sent, by type.", "type", "tx.request."),
        ("responses_received", "Responses received, by type.", "type", "rx.response."),
        ("datagrams_dropped", "Datagrams dropped unanswered, by reason.", "reason", "rx.dropped."),
        ("sends_refused", "Datagrams not sent, by reason.", "reason", "tx.refused."),
        ("stores_rejected", "STORE requests refused, by reason.", "reason", "store.rejected."),
    ]
    for name, doc, label, prefix in families:
        family = CounterMetricFamily(P + name, doc, labels=[label])
        for value_label, value in sorted(_labelled(stats, prefix)):
            family.add_metric([value_label], value)
        yield family
    yield _counter(
        "request_timeouts", "Requests that got no answer in time.", get("tx.timeouts", 0)
    )
    yield _counter("retransmits", "Requests sent again after a timeout.", get("tx.retransmits", 0))
    yield _counter(
        "lookups_started",
        "Lookups started (the node's own and internal ones).",
        get("lookups.started", 0),
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=value)


def _gauges(
    node: Node, stats: dict[str, float], in_flight: dict[str, int], started: float
) -> Iterator[Metric]:
    per_bucket = GaugeMetricFamily(
        P + "routing_table_bucket_contacts",
        "Contacts per bucket (index = bits in common with this node's id).",
        labels=["bucket"],
    )
    contacts = spares = 0
    for index, entries, replacements in node.routing_table.buckets():
        per_bucket.add_metric([str(index)], len(entries))
        contacts += len(entries)
        spares += replacements
    yield _gauge("routing_table_contacts", "Contacts in the routing table.", contacts)
    yield _gauge("routing_table_replacements", "Contacts waiting in replacement caches.", spares)
    yield per_bucket
    yield _gauge("records_stored", "Records this node holds.", stats.get("store.records", 0))
    yield _gauge(
        "records_stored_bytes", "Bytes of record values held.", stats.get("store.bytes", 0)
    )
    flight = GaugeMetricFamily(
        P + "queries_in_flight", "This node's queries not finished yet.", labels=["kind"]
    )
    for kind in KINDS:
        flight.add_metric([kind], in_flight.get(kind, 0))
    yield flight
    yield _gauge(
        "ratelimit_blocked_sources",
        "Source addresses the ingress rate limiter blocks now.",
        stats.get("ratelimit.blocked_now", 0),
    )
    limits = GaugeMetricFamily(P + "limit", "Configured limits, by name.", labels=["name"])
    for name, value in sorted(_labelled(stats, "limit.")):
        limits.add_metric([name], value)
    yield limits
    yield _gauge("start_time_seconds", "Unix time the daemon started.", started)
    info = GaugeMetricFamily(P + "info", "Version and node id.", labels=["version", "node_id"])
    info.add_metric([__version__, node.node_id.hex()], 1)
    yield info


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format ``accept`` asks for (OpenMetrics or the text format)."""
    from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
