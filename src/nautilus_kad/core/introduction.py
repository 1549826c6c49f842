"""The sealed offer and answer two peers exchange through a rendezvous.

The rendezvous carries them but cannot forge or alter them: each is signed end to end with
the sender's node key (its id is the hash of that key), names the other side, and carries a
fresh X25519 key. From the two the peers derive their channel keys, which nobody else holds.

* the **offer** (initiator A → target B): ``[1, 0, A's public key, B's id, nonce(16), time,
  A's X25519 key, A's channel id, A's NAT class, [A's addresses]]`` + signature;
* the **answer** (B → A): ``[1, 1, B's public key, A's id, the offer's nonce, time, B's
  X25519 key, B's channel id, B's NAT class, [B's addresses]]`` + signature.

The addresses a peer signs are its own (the address its rendezvous saw it at, its external
address, its LAN address); the other side punches one only when its IP is also the one the
rendezvous observed (or, for LAN addresses, when both sit behind the same public IP), so
neither a lying rendezvous nor a lying peer can aim the punches at a third party.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .auth import Authenticator
from .connectwire import decode_address, encode_address
from .errors import DecodeError
from .ids import NodeId
from .messages import Address

NONCE_BYTES = 16
MAX_ADDRESSES = 4
OFFER, ANSWER = 0, 1
_DOMAIN = b"nautilus-kad/introduction/v1"
_SALT = b"nautilus-kad/channel/v1"
NAT_CODES = ("unknown", "public", "endpoint-independent", "endpoint-dependent")
"""The NAT classes (core/natclass.py values) by their wire code."""


@dataclass(frozen=True, slots=True)
class Introduction:
    """A verified offer or answer."""

    kind: int
    peer_id: NodeId
    """The signer (derived from its key)."""
    other: NodeId
    """The node it is meant for."""
    nonce: bytes
    time: int
    ephemeral: bytes
    channel: int
    """The signer's channel id: datagrams to it carry this id."""
    nat_class: str
    addresses: tuple[Address, ...]


def seal(
    auth: Authenticator,
    kind: int,
    other: NodeId,
    nonce: bytes,
    time: float,
    ephemeral: bytes,
    channel: int,
    nat_class: str,
    addresses: list[Address],
) -> bytes:
    """A signed offer or answer."""
    code = NAT_CODES.index(nat_class) if nat_class in NAT_CODES else 0
    body = [
        1,
        kind,
        auth.identity.public_key,
        other.to_bytes32(),
        nonce,
        int(time),
        ephemeral,
        channel,
        code,
        [encode_address(a) for a in addresses[:MAX_ADDRESSES]],
    ]
    payload = msgpack.packb(body)
    return bytes(msgpack.packb([payload, auth.sign(_DOMAIN + payload)]))


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, max_bin_len=512, max_str_len=0, max_array_len=16, max_map_len=0,
            max_ext_len=0,
        )  # fmt: skip
    except Exception as exc:  # msgpack raises several types on garbage
        raise DecodeError("schema", f"sealed blob: {exc.__class__.__name__}") from None


def open_sealed(auth: Authenticator, data: bytes, kind: int) -> Introduction:
    """Verify and decode an offer or answer; :class:`DecodeError` for anything invalid."""
    outer = _unpack(data)
    if type(outer) is not list or len(outer) != 2:
        raise DecodeError("schema", "sealed blob must be [payload, signature]")
    payload, signature = outer
    if type(payload) is not bytes or type(signature) is not bytes or len(signature) != 64:
        raise DecodeError("schema", "sealed blob fields")
    body = _unpack(payload)
    if type(body) is not list or len(body) != 10:
        raise DecodeError("schema", "sealed body must be a list of 10")
    version, got_kind, key, other, nonce, time, ephemeral, channel, code, addresses = body
    if version != 1 or got_kind != kind:
        raise DecodeError("schema", "sealed blob version or kind")
    for value, size in ((key, 32), (other, 32), (nonce, NONCE_BYTES), (ephemeral, 32)):
        if type(value) is not bytes or len(value) != size:
            raise DecodeError("schema", "sealed blob field size")
    if type(time) is not int or type(channel) is not int or not 0 < channel < 2**32:
        raise DecodeError("schema", "sealed blob time or channel")
    if type(code) is not int or not 0 <= code < len(NAT_CODES):
        raise DecodeError("schema", "sealed blob NAT class")
    if type(addresses) is not list or len(addresses) > MAX_ADDRESSES:
        raise DecodeError("schema", "sealed blob addresses")
    decoded = tuple(decode_address(a) for a in addresses)
    signer = auth.verify(key, _DOMAIN + payload, signature)
    if signer is None:
        raise DecodeError("signature", "sealed blob signature")
    return Introduction(
        kind,
        signer,
        NodeId(int.from_bytes(other, "big")),
        nonce,
        time,
        ephemeral,
        channel,
        NAT_CODES[code],
        decoded,
    )


def channel_keys(
    shared: bytes, initiator: NodeId, responder: NodeId, i_ephemeral: bytes,
    r_ephemeral: bytes, nonce: bytes,
) -> tuple[bytes, bytes]:  # fmt: skip
    """The (initiator → responder, responder → initiator) keys of a channel: bound to both
    ids, both ephemeral keys and the offer's nonce."""
    info = b"".join(
        (initiator.to_bytes32(), responder.to_bytes32(), i_ephemeral, r_ephemeral, nonce)
    )
    okm = HKDF(hashes.SHA256(), 64, _SALT, info).derive(shared)
    return okm[:32], okm[32:]


_LAN = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
              "169.254.0.0/16", "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")
)  # fmt: skip


def is_private(ip: str) -> bool:
    """A LAN address (RFC 1918, CGNAT, link-local, loopback, ULA): never punched unless both
    peers sit behind the same public IP."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in _LAN if network.version == address.version)


def punchable(
    candidates: tuple[Address, ...], observed_ip: str | None, own_ip: str | None
) -> list[Address]:
    """The signed ``candidates`` we may send to: those at the IP the rendezvous observed the
    peer at, and LAN addresses when the peer's public IP is ours (same NAT)."""
    out: list[Address] = []
    for address in candidates:
        same_ip = observed_ip is not None and address[0] == observed_ip
        same_nat = observed_ip is not None and observed_ip == own_ip and is_private(address[0])
        if (same_ip or same_nat) and address not in out:
            out.append(address)
    return out
