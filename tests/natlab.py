"""A NAT lab on this machine: Linux network namespaces, veth pairs and nftables NAT.

Topology (every address lives only inside the lab's namespaces)::

    public host i  10.200.(10+i).10/16 ─┐
                                         ├─ bridge br0 in namespace "inet" (the "internet")
    NAT j  wan 10.200.(100+j).1/16  ─────┘
           lan 192.168.(j+1).1/24 ── host 192.168.(j+1).2/24 (default route via the NAT)

The "internet" is a private range, as the outside of a carrier-grade NAT is; each public
host and each NAT has a /24 of its own so the external-address vote's distinct-network rule
can be met. The four NAT kinds are the nftables recipes of ``../shared/research/nat.md``
§10.1, verified there on this kind of machine:

* ``full-cone`` — masquerade, and every inbound UDP port is forwarded to the one LAN host;
* ``address-restricted`` — masquerade; inbound gets in only from an IP the mapping sent to
  (a dynamic set of remote IP . port, refreshed by outbound traffic);
* ``port-restricted`` — masquerade; inbound only as conntrack replies (exact endpoint);
* ``symmetric`` — ``masquerade fully-random`` (a new port per destination), replies only.

Variants (part 2, the pair matrix): :meth:`NatLab.add_nat` puts several hosts behind one
port-restricted or symmetric NAT on a LAN bridge, with or without hairpinning (RFC 4787
REQ-9: a host that sends to its NAT's external address reaches the host whose mapping that
is, and sees the sender's external address as the source); ``binding_timeout`` shortens one
NAT's UDP conntrack timeouts (its mappings expire after that much idle time); and
:meth:`NatLab.set_loss` drops a share of every datagram crossing the "internet" bridge
(nftables ``numgen``: this kernel has no ``sch_netem``, so ``tc qdisc netem`` is not an
option here).

Everything the lab creates is removed on exit, also when a test fails; namespaces left by
a lab whose process died are swept when the next lab starts. Needs root, ``ip`` and
``nft``: :func:`require_lab` skips without them, and fails instead when ``CI`` is set.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import pytest

PREFIX = "nklab"
_labs = itertools.count()
NAT_KINDS = ("full-cone", "address-restricted", "port-restricted", "symmetric")


def lab_problem() -> str | None:
    """Why the lab cannot run here, or None."""
    if sys.platform != "linux":
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool!r} (apt-get install iproute2 nftables)"
    return None


def require_lab() -> None:
    """Skip the calling test when the lab cannot run, or fail it when env ``CI`` is set (CI
    runs as root and installs the tools: a lab that cannot run there is a broken build)."""
    problem = lab_problem()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem} (CI is set, so this is a failure)")
    pytest.skip(problem)


def sh(
    *argv: str, input_text: str | None = None, check: bool = True, netns: str | None = None
) -> str:
    """Run ``argv`` (inside ``netns`` if given) to the end; its output."""
    if netns is not None:
        argv = ("ip", "netns", "exec", netns, *argv)
    result = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def nat_rules(kind: str, lan_host: str, filter_timeout: int = 60) -> str:
    """The nftables script of one NAT namespace (``wan`` and ``lan`` interfaces);
    ``filter_timeout``: how long an address-restricted NAT remembers a contacted IP."""
    drops = """
        chain inbound { type filter hook input priority filter; policy accept;
            iifname "wan" ct state new drop
        }
    """
    if kind == "full-cone":
        return f"""
        table ip nl {{
            chain post {{ type nat hook postrouting priority srcnat; policy accept;
                oifname "wan" masquerade
            }}
            chain pre {{ type nat hook prerouting priority dstnat; policy accept;
                iifname "wan" udp dport 1024-65535 dnat to {lan_host}
            }}
        }}"""
    if kind == "address-restricted":
        return f"""
        table ip nl {{
            set contacted {{ type ipv4_addr . inet_service; flags dynamic,timeout;
                timeout {filter_timeout}s;
            }}
            chain post {{ type nat hook postrouting priority srcnat; policy accept;
                oifname "wan" masquerade
            }}
            chain pre {{ type nat hook prerouting priority dstnat; policy accept;
                iifname "wan" ip saddr . udp dport @contacted dnat to {lan_host}
            }}
            chain forwarding {{ type filter hook forward priority filter; policy accept;
                iifname "lan" oifname "wan" update @contacted {{ ip daddr . udp sport }}
                iifname "wan" ct state new ct status dnat accept
                iifname "wan" ct state new drop
            }}
            {drops}
        }}"""
    if kind in ("port-restricted", "symmetric"):
        masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"
        return f"""
        table ip nl {{
            chain post {{ type nat hook postrouting priority srcnat; policy accept;
                oifname "wan" {masquerade}
            }}
            chain forwarding {{ type filter hook forward priority filter; policy accept;
                iifname "wan" ct state new drop
            }}
            {drops}
        }}"""
    raise ValueError(f"unknown NAT kind {kind!r}: use {', '.join(NAT_KINDS)}")


def hairpin_rules(wan_ip: str) -> str:
    """RFC 4787 REQ-9 hairpinning on a NAT whose LAN is the bridge ``lan``.

    Linux conntrack cannot look a mapping up by its external port, so the NAT remembers
    one itself: after masquerading (postrouting, later than srcnat) every outbound UDP
    datagram refreshes ``external port -> LAN address`` in a dynamic map, whose entries
    live as long as an assured conntrack entry would. A datagram from the LAN to the
    external address is sent to the LAN address and port of that mapping, source-NATed to
    the external address, so the receiver sees the sender's external address. The router
    stops bridged LAN frames from running its IP hooks (br_netfilter), as a switch would."""
    return f"""
    table ip hairpin {{
        map mapped {{ type inet_service : ipv4_addr . inet_service; flags dynamic,timeout;
            timeout 120s;
        }}
        chain learn {{ type filter hook postrouting priority srcnat + 10; policy accept;
            oifname "wan" meta l4proto udp \
                update @mapped {{ udp sport : ct original ip saddr . ct original proto-src }}
        }}
        chain pre {{ type nat hook prerouting priority dstnat; policy accept;
            iifname "lan" ip daddr {wan_ip} udp dport @mapped dnat ip to udp dport map @mapped
        }}
        chain post {{ type nat hook postrouting priority srcnat - 10; policy accept;
            iifname "lan" oifname "lan" ct status dnat snat ip to {wan_ip}
        }}
    }}"""


def loss_rules(percent: int, blocked: Sequence[tuple[str, str]] = ()) -> str:
    """The "internet" bridge's faults: a bridge-family table that drops ``percent`` % of
    the frames it forwards, and every frame between the two IPs of a ``blocked`` pair
    (recreated on every change)."""
    drop = f"numgen random mod 100 < {percent} drop" if percent else ""
    cuts = "".join(
        f"ip saddr {a} ip daddr {b} drop\n ip saddr {b} ip daddr {a} drop\n" for a, b in blocked
    )
    return f"""
    table bridge loss {{ }}
    delete table bridge loss
    table bridge loss {{
        chain forwarding {{ type filter hook forward priority filter; policy accept;
            {cuts}
            {drop}
        }}
    }}"""


@dataclass
class Host:
    """A namespace with one address: a public host, or a host behind a NAT."""

    netns: str
    ip: str
    nat: str | None = None
    """The NAT kind in front of it (None: public)."""
    wan_ip: str | None = None
    """Its NAT's external IP."""
    router: str | None = None
    """The namespace of its NAT (None: public)."""

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class NatLab:
    """Builds the topology step by step; a context manager that always cleans up."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{next(_labs)}-")
    """Prefix of its namespaces: the pid (for the sweep) and a counter (two labs at once)."""
    namespaces: list[str] = field(default_factory=list)
    publics: list[Host] = field(default_factory=list)
    natted: list[Host] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    uplinks: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(netns, ifname, ip, mac) of everything on the bridge."""
    conntrack_timeouts: tuple[int, int] | None = None
    """(unreplied, assured) UDP conntrack timeouts in the NAT namespaces, in seconds."""
    filter_timeout: int = 60
    """Seconds an address-restricted NAT keeps an IP it sent to in its filter."""
    loss: int = 0
    """Percent loss on the "internet" bridge (:meth:`set_loss`)."""
    blocked: list[tuple[str, str]] = field(default_factory=list)
    """Pairs of public IPs that cannot reach each other (:meth:`block`)."""

    def __enter__(self) -> NatLab:
        sweep_stale_labs()
        try:
            self.inet = self._netns("inet")
            sh("ip", "-n", self.inet, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.inet, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- building --------------------------------------------------------------------

    def _netns(self, name: str) -> str:
        netns = f"{self.tag}{name}"
        sh("ip", "netns", "add", netns)
        self.namespaces.append(netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        return netns

    def _uplink(self, netns: str, ifname: str, address: str) -> None:
        """A veth from ``netns`` (named ``ifname``, with ``address``) to the bridge."""
        port = f"p{len(self.namespaces)}"
        sh("ip", "link", "add", "name", ifname, "netns", netns, "type", "veth", "peer",
           "name", port, "netns", self.inet)  # fmt: skip
        sh("ip", "-n", self.inet, "link", "set", port, "master", "br0")
        sh("ip", "-n", self.inet, "link", "set", port, "up")
        sh("ip", "-n", netns, "addr", "add", address, "dev", ifname)
        sh("ip", "-n", netns, "link", "set", ifname, "up")
        me = (netns, ifname, address.split("/", maxsplit=1)[0], mac_of(netns, ifname))
        for other in self.uplinks:
            static_neighbour(me, other)
            static_neighbour(other, me)
        self.uplinks.append(me)

    def add_public(self) -> Host:
        """A host directly on the "internet", in a /24 of its own."""
        n = len(self.publics)
        netns = self._netns(f"p{n}")
        ip = f"10.200.{10 + n}.10"
        self._uplink(netns, "eth0", f"{ip}/16")
        host = Host(netns, ip)
        self.publics.append(host)
        return host

    def add_natted(self, kind: str, binding_timeout: int | None = None) -> Host:
        """A host behind a NAT of its own of ``kind`` (see :data:`NAT_KINDS`)."""
        (host,) = self.add_nat(kind, binding_timeout=binding_timeout)
        return host

    def add_nat(
        self,
        kind: str,
        hosts: int = 1,
        *,
        hairpin: bool = False,
        binding_timeout: int | None = None,
    ) -> list[Host]:
        """A NAT of ``kind`` with ``hosts`` hosts behind it.

        One host hangs on a veth named ``lan``; several share a bridge named ``lan`` (they
        reach each other on the LAN directly), which only the port-restricted and symmetric
        NATs support (the full-cone and address-restricted recipes forward inbound to one
        host). ``hairpin``: a datagram from the LAN to the NAT's external address goes to
        the host whose mapping it names, from the sender's mapping. ``binding_timeout``:
        seconds of idle after which this NAT forgets a mapping (both conntrack UDP
        timeouts; the address-restricted filter too), instead of the lab's defaults."""
        if hosts < 1 or hosts > 200:
            raise ValueError("a NAT has 1 to 200 hosts")
        if hosts > 1 and kind not in ("port-restricted", "symmetric"):
            raise ValueError(f"{kind!r} NATs take one host; several need port-restricted/symmetric")
        if hairpin and hosts < 2:
            raise ValueError("hairpinning needs two hosts behind the NAT")
        j = len({h.router for h in self.natted})
        subnet = f"192.168.{j + 1}"
        lan_ips = [f"{subnet}.{2 + i}" for i in range(hosts)]
        filter_timeout = binding_timeout if binding_timeout is not None else self.filter_timeout
        rules = nat_rules(kind, lan_ips[0], filter_timeout)  # fails early on a bad kind
        router = self._netns(f"n{j}")
        wan_ip = f"10.200.{100 + j}.1"
        self._uplink(router, "wan", f"{wan_ip}/16")
        gateway_ip = f"{subnet}.1"
        if hosts > 1:
            sh("ip", "-n", router, "link", "add", "lan", "type", "bridge")
            # With br_netfilter loaded (it is here) bridged frames would also run the IP
            # hooks, with the bridge *port* as interface: the hairpin rules would miss.
            sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", netns=router, check=False)
        built: list[Host] = []
        insides: list[tuple[str, str, str, str]] = []
        for i, lan_ip in enumerate(lan_ips):
            netns = self._netns(f"h{j}" if hosts == 1 else f"h{j}l{i}")
            port = "lan" if hosts == 1 else f"l{i}"
            sh("ip", "link", "add", "name", "eth0", "netns", netns, "type", "veth", "peer",
               "name", port, "netns", router)  # fmt: skip
            if hosts > 1:
                sh("ip", "-n", router, "link", "set", port, "master", "lan")
                sh("ip", "-n", router, "link", "set", port, "up")
            sh("ip", "-n", netns, "addr", "add", f"{lan_ip}/24", "dev", "eth0")
            sh("ip", "-n", netns, "link", "set", "eth0", "up")
            sh("ip", "-n", netns, "route", "add", "default", "via", gateway_ip)
            insides.append((netns, "eth0", lan_ip, mac_of(netns, "eth0")))
            built.append(Host(netns, lan_ip, kind, wan_ip, router))
        sh("ip", "-n", router, "addr", "add", f"{gateway_ip}/24", "dev", "lan")
        sh("ip", "-n", router, "link", "set", "lan", "up")
        gateway = (router, "lan", gateway_ip, mac_of(router, "lan"))
        for inside in insides:
            static_neighbour(inside, gateway)
            static_neighbour(gateway, inside)
            for other in insides:
                if other is not inside:
                    static_neighbour(inside, other)
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        timeouts = self.conntrack_timeouts
        if binding_timeout is not None:
            timeouts = (binding_timeout, binding_timeout)
        if timeouts is not None:
            unreplied, assured = timeouts
            sh("ip", "netns", "exec", router, "sysctl", "-qw",
               f"net.netfilter.nf_conntrack_udp_timeout={unreplied}",
               f"net.netfilter.nf_conntrack_udp_timeout_stream={assured}")  # fmt: skip
        sh("ip", "netns", "exec", router, "nft", "-f", "-", input_text=rules)
        if hairpin:
            sh("ip", "netns", "exec", router, "nft", "-f", "-", input_text=hairpin_rules(wan_ip))
        self.natted.extend(built)
        return built

    def set_loss(self, percent: int) -> None:
        """Drop ``percent`` % of the datagrams crossing the "internet" bridge (each one
        independently, both directions; 0 turns loss off). Traffic inside a NAT's LAN and
        from a host to its own NAT is not affected."""
        if not 0 <= percent <= 100:
            raise ValueError("loss is a percentage")
        self.loss = percent
        sh("nft", "-f", "-", input_text=loss_rules(percent, self.blocked), netns=self.inet)

    def block(self, a: str, b: str, blocked: bool = True) -> None:
        """Drop every datagram between the public IPs ``a`` and ``b`` (two NATs' external
        addresses, say), or stop doing so: a path that opens later."""
        pairs = [p for p in self.blocked if set(p) != {a, b}]
        self.blocked = [*pairs, (a, b)] if blocked else pairs
        self.set_loss(self.loss)

    # --- running ---------------------------------------------------------------------

    def spawn(self, host: Host, command: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``command`` inside ``host``; it is killed when the lab closes."""
        process: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            host.argv(*command), text=True, **kwargs
        )
        self.processes.append(process)
        return process

    def run(self, host: Host, command: Sequence[str], timeout: float = 30.0) -> str:
        """Run ``command`` inside ``host`` to the end; its output (raises on failure)."""
        result = subprocess.run(
            host.argv(*command), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command} in {host.netns} failed: {result.stderr.strip()}")
        return result.stdout

    # --- cleaning up -----------------------------------------------------------------

    def close(self) -> None:
        """Stop every process and delete every namespace (and with them every veth)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
        self.processes.clear()
        for netns in reversed(self.namespaces):
            sh("ip", "netns", "del", netns, check=False)
        self.namespaces.clear()


def mac_of(netns: str, ifname: str) -> str:
    (info,) = json.loads(sh("ip", "-n", netns, "-j", "link", "show", "dev", ifname))
    return str(info["address"])


def static_neighbour(at: tuple[str, str, str, str], peer: tuple[str, str, str, str]) -> None:
    """A permanent ARP entry at ``at`` for ``peer``: no ARP traffic on the lab's links, so
    the first datagram to a new neighbour never waits for resolution."""
    netns, ifname, _, _ = at
    _, _, ip, mac = peer
    sh("ip", "-n", netns, "neigh", "replace", ip, "lladdr", mac, "dev", ifname, "nud", "permanent")


def sweep_stale_labs() -> None:
    """Delete lab namespaces whose creating process no longer runs (a killed test run)."""
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX) :].split("x", 1)[0]
        if pid_text.isdigit() and not os.path.exists(f"/proc/{pid_text}"):
            sh("ip", "netns", "del", name, check=False)


def lab_namespaces() -> list[str]:
    """Every lab namespace that exists now (any process's)."""
    return [
        line.split()[0]
        for line in sh("ip", "netns", "list", check=False).splitlines()
        if line.split() and line.split()[0].startswith(PREFIX)
    ]
