"""A small client of the daemon's API, on the standard library alone.

The command line imports this (and :mod:`.apifile`) only, so ``nautilus-kad get`` starts in
a few tens of milliseconds whether or not a daemon runs. Every call has a timeout: a daemon
that accepts connections but never answers is reported, never waited on forever.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from .apifile import API_VERSION

PREFIX = f"/api/v{API_VERSION}"
HANDSHAKE_TIMEOUT = 3.0
"""Seconds a daemon gets to answer ``/version`` before it counts as not answering."""
OPERATION_TIMEOUT = 60.0
"""Seconds an action (a put, a lookup ...) may take once the daemon answered."""
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class DaemonUnreachableError(Exception):
    """Nothing usable answers at the URL: refused, timed out, or not our API."""

    def __init__(self, url: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(f"cannot reach the daemon at {url} ({reason})")
        self.refused = refused
        """The connection was refused: nobody listens (a daemon that is gone)."""


class DaemonRejectedError(Exception):
    """The daemon answered but refused us: a wrong token, or an API version we do not speak."""


class DaemonOperationError(Exception):
    """The daemon ran the action and it failed (not found, no answer from a peer ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class DaemonClient:
    """Talks to one daemon: ``url`` from the api file (or ``--api``), ``token`` for actions."""

    url: str
    token: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """What ``/version`` said (after :meth:`handshake`): version, node id, UDP address."""

    def handshake(self) -> dict[str, Any]:
        """``GET /version`` within :data:`HANDSHAKE_TIMEOUT`; checks the API version."""
        info = self.get("version", timeout=HANDSHAKE_TIMEOUT)
        if not isinstance(info, dict) or info.get("api") != API_VERSION:
            got = info.get("api") if isinstance(info, dict) else None
            raise DaemonRejectedError(
                f"the daemon at {self.url} speaks API version {got}, this client {API_VERSION}"
            )
        self.info = info
        return info

    def get(
        self, path: str, query: dict[str, Any] | None = None, *, timeout: float = HANDSHAKE_TIMEOUT
    ) -> Any:
        target = f"{PREFIX}/{path}"
        if query:
            target += "?" + urlencode(query)
        return self._request("GET", target, None, timeout)

    def post(
        self, path: str, body: dict[str, Any] | None = None, *, timeout: float = OPERATION_TIMEOUT
    ) -> Any:
        return self._request("POST", f"{PREFIX}/{path}", body or {}, timeout)

    def _request(
        self, method: str, target: str, body: dict[str, Any] | None, timeout: float
    ) -> Any:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise DaemonUnreachableError(self.url, "not an http:// URL")
        port = parts.port or 80
        host = parts.hostname
        headers = {"Accept": "application/json", "User-Agent": "nautilus-kad-cli"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read(MAX_RESPONSE_BYTES + 1)
        except ConnectionRefusedError:
            raise DaemonUnreachableError(self.url, "connection refused", refused=True) from None
        except TimeoutError:
            raise DaemonUnreachableError(self.url, f"no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DaemonUnreachableError(self.url, reason) from None
        finally:
            conn.close()
        try:
            data = json.loads(raw) if len(raw) <= MAX_RESPONSE_BYTES else None
        except ValueError:
            data = None
        if data is None:
            raise DaemonUnreachableError(
                self.url, f"HTTP {response.status}, not a nautilus-kad API"
            )
        if response.status in (401, 403):
            message = data.get("error") if isinstance(data, dict) else None
            raise DaemonRejectedError(f"the daemon at {self.url} refused the request: {message}")
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise DaemonOperationError(str(message or f"HTTP {response.status}"), response.status)
        return data
