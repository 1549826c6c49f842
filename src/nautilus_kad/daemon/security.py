"""The checks every request to the local API passes before any handler runs.

A local HTTP API is reachable by every web page the operator's browser opens, so (as the
research in docs/daemon notes: kubo's CSRF history, Jupyter's DNS-rebinding fix):

* **Host allowlist.** A page on ``evil.example`` that rebinds its name to 127.0.0.1 sends
  ``Host: evil.example:PORT``: refused, so it can read nothing, not even the page or
  ``/metrics``.
* **Origin check.** A cross-site request from a page the browser shows (even a ``no-cors``
  ``text/plain`` POST, which needs no preflight) carries its ``Origin``: anything but our own
  origin is refused before routing. Requests without ``Origin`` (curl, the CLI) pass.
* **No CORS headers, ever**, so no other origin may read an answer.
* **A bearer token** on every action (POST): it lives only in the 0600 api file.
* Security headers on every answer; a strict Content-Security-Policy on the page.

Refusals are JSON ``{"error": ...}`` with status 403 (401 for a missing or wrong token) and
are counted by reason.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
}


def allowed_hosts(bound_host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values we answer: the loopback names on our port, the address we are
    bound to, and what the operator added (``--api-allowed-host``)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    names.add(f"[{bound_host}]" if ":" in bound_host else bound_host)
    hosts = {f"{name}:{port}" for name in names}
    hosts.update(h.lower() for h in extra)
    return frozenset(hosts)


def json_error(status: int, message: str, **headers: str) -> web.Response:
    response = web.json_response({"error": message}, status=status, headers=headers or None)
    response.headers.update(HEADERS)
    return response


class Guard:
    """The middleware (Host and Origin checks, headers) and the token check."""

    def __init__(self, hosts: frozenset[str], token: str) -> None:
        self.hosts = hosts
        self.origins = frozenset(f"http://{h}" for h in hosts)
        self._token = token.encode()
        self.refused: Counter[str] = Counter()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "").lower()
        if host not in self.hosts:
            self.refused["host"] += 1
            return json_error(403, "forbidden: Host not allowed (DNS rebinding protection)")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in self.origins:
            self.refused["origin"] += 1
            return json_error(403, "forbidden: cross-origin request")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status == 405:
                self.refused["method"] += 1
            allow = exc.headers.get("Allow")
            extra = {"Allow": allow} if allow else {}
            return json_error(exc.status, exc.reason.lower(), **extra)
        if not response.prepared:
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries our bearer token (compared in constant time)."""
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)
        if not ok:
            self.refused["token"] += 1
        return ok
