"""Addresses: parsing ``HOST:PORT`` text (no name resolution: that is I/O) and classifying
IP addresses (public or local, their /24 or /48 subnet) for the abuse limits."""

from __future__ import annotations

import enum
import ipaddress
from functools import lru_cache

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


class Scope(enum.Enum):
    """What kind of network an IP address belongs to."""

    PUBLIC = "public"
    """Globally routable: the abuse limits apply."""
    LOCAL = "local"
    """Loopback, private, link-local, shared (CGNAT) or documentation ranges: test networks
    and LANs, exempt from the per-IP and per-subnet limits."""
    INVALID = "invalid"
    """Not an address a peer can have (unspecified, multicast, broadcast, malformed)."""


_SCOPE_CACHE = 1 << 17
"""Hosts whose scope is remembered: more than the peers of a 100 000-node simulation (a
cache smaller than the working set misses on nearly every lookup answer), and still only a
few MiB when a flood of forged sources churns it."""


@lru_cache(maxsize=_SCOPE_CACHE)
def address_scope(host: str) -> Scope:
    """The :class:`Scope` of ``host`` (an IP literal), cached: it is asked per datagram and
    for every contact of every lookup answer."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return Scope.INVALID
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
        return Scope.INVALID
    return Scope.PUBLIC if ip.is_global else Scope.LOCAL


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@lru_cache(maxsize=_SCOPE_CACHE)
def is_public(host: str) -> bool:
    """``address_scope(host) is Scope.PUBLIC``, as a cached bool: hot loops test many hosts
    with ``all(map(...))``, which a bool keeps at C speed (hashing an Enum member runs
    Python code)."""
    return address_scope(host) is Scope.PUBLIC


@lru_cache(maxsize=_SCOPE_CACHE)
def is_usable(host: str) -> bool:
    """Whether ``host`` could be a peer's address at all (public or local, not invalid)."""
    return address_scope(host) is not Scope.INVALID


@lru_cache(maxsize=_SCOPE_CACHE)
def subnet_of(host: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of a public ``host``, None for any other: the
    unit of the routing table's diversity limit (one operator rarely holds many)."""
    if address_scope(host) is not Scope.PUBLIC:
        return None
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
