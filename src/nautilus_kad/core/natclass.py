"""What kind of NAT (if any) sits between us and the peers, from the ports they saw.

RFC 4787 names a NAT's *mapping* behaviour: endpoint-independent (EIM: one external port
for every destination; the "cone" NATs) or endpoint-dependent (EDM: a new port per
destination, the "symmetric" NAT). The answers we get tell us which: every observer reports
the ``ip:port`` our request arrived from, so when the observers agree on the port the mapping
is endpoint-independent, and when each sees a port of its own it is endpoint-dependent. An
external address equal to the address we are bound to means there is no NAT at all.

This is per address family and advisory: it explains the node's situation (``reachability``
shows it) and tells part 2 how to punch holes, but whether a node may serve is decided by
probes only (:mod:`.reachability`). Filtering behaviour cannot be seen in answers; probes see
it.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable

from .messages import Address


class NatClass(enum.Enum):
    PUBLIC = "public"
    """The external address is the bound address: no NAT."""
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    """One external port for every destination (full cone, restricted and port-restricted)."""
    ENDPOINT_DEPENDENT = "endpoint-dependent"
    """A different external port per destination (symmetric)."""
    UNKNOWN = "unknown"
    """Too few or too inconsistent observations."""


def classify(
    observed: Iterable[Address],
    external_ip: str | None,
    local: Address | None = None,
    min_observers: int = 3,
) -> NatClass:
    """The class of the mapping, given what each observer network saw (one entry per
    network, e.g. :meth:`.extaddr.ExternalAddressVoter.observations`), the adopted external
    IP and the address we are bound to (None or a wildcard IP when unknown).

    * fewer than ``min_observers`` observations of the external IP: UNKNOWN;
    * one port seen by at least ``min_observers`` and by more than half: ENDPOINT_INDEPENDENT
      (PUBLIC when that ``ip:port`` is ``local``);
    * no port seen by more than half: ENDPOINT_DEPENDENT;
    * otherwise (say 2 of 3 agree): UNKNOWN, until more answers come.
    """
    if external_ip is None:
        return NatClass.UNKNOWN
    ports = Counter(port for host, port in observed if host == external_ip)
    total = sum(ports.values())
    if total < max(1, min_observers):
        return NatClass.UNKNOWN
    port, top = ports.most_common(1)[0]
    if top >= min_observers and 2 * top > total:
        if local is not None and local == (external_ip, port):
            return NatClass.PUBLIC
        return NatClass.ENDPOINT_INDEPENDENT
    if 2 * top <= total:
        return NatClass.ENDPOINT_DEPENDENT
    return NatClass.UNKNOWN
