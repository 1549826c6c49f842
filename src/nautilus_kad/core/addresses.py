"""Parsing ``HOST:PORT`` text into addresses (no name resolution: that is I/O)."""

from __future__ import annotations

import ipaddress

from .errors import KadError
from .messages import Address


class AddressError(KadError, ValueError):
    """Text that is not a usable ``HOST:PORT``."""


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """``"127.0.0.1:7400"``, ``"[::1]:7400"`` or ``"localhost:7400"`` → ``(host, port)``.

    IPv6 literals need brackets when a port follows. Host names are returned as given; the
    asyncio driver resolves them.
    """
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"{text!r}: missing ']' after IPv6 address")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host, port_text = text, None  # bare IPv6 literal
    else:
        host, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise AddressError(f"{text!r}: expected HOST:PORT")
        port = default_port
    else:
        if not port_text.isdigit():
            raise AddressError(f"{text!r}: port must be a number")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise AddressError(f"{text!r}: port must be between 1 and 65535")
    if not host:
        raise AddressError(f"{text!r}: missing host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise AddressError(f"{text!r}: invalid IPv6 address") from exc
    return host, port


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
