"""The exception tree: every error nautilus-kad raises derives from :class:`KadError`."""

from __future__ import annotations


class KadError(Exception):
    """Base of every nautilus-kad error."""


class DecodeError(KadError):
    """An incoming datagram is malformed, oversized, unsigned or otherwise invalid.

    ``reason`` is a short, stable label used as a metric name (``dropped.<reason>``).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ValidationError(KadError):
    """A record or argument breaks a protocol rule (size, key, TTL …)."""


class ValueTooLargeError(ValidationError):
    """A value is larger than fits inline in one datagram."""


class QueryError(KadError):
    """A network operation could not complete."""


class QueryTimeoutError(QueryError):
    """No peer answered in time."""


class NoPeersError(QueryError):
    """The operation needs peers and the routing table has none."""
