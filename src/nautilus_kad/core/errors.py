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


class BadSignatureError(ValidationError):
    """A signed record's signature does not verify against its owner's public key."""


class RecordConflictError(KadError):
    """The storers refused a record because of the one they already hold."""


class StaleSequenceError(RecordConflictError):
    """A signed record's sequence number is not newer than the stored one (or reuses the
    stored sequence number for a different value)."""


class CasMismatchError(RecordConflictError):
    """A compare-and-swap put expected a sequence number that is no longer current: the
    storers hold a newer one."""


class ConnectError(QueryError):
    """``Node.connect`` found no channel to the peer: ``code`` says why (``not_found``,
    ``refused``, ``timeout``, ``no_path``, ``no_answer``, ``rate_limited``, ``limit``,
    ``bad_answer``, ``bad_target``, ``stopped``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ChannelClosedError(KadError):
    """The channel is closed (by us, by the peer, or after ``channel_idle`` of silence)."""
