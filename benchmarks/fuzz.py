"""Fuzz the datagram decoder and the engine's datagram entry point.

    python -m benchmarks.fuzz --inputs 1000000          # structure-aware random mutation
    python -m benchmarks.fuzz --inputs 200000 --atheris # coverage-guided, if atheris installs

Inputs come from a hostile peer that holds a real key: pure random bytes, valid datagrams
with flipped/inserted/deleted bytes, and above all valid envelopes whose msgpack structure is
mutated (a field replaced by a value of another type or size, elements dropped or added) and
then *signed again*, so they pass authentication and reach the schema checks and the engine's
handlers. Responses reuse the txids of requests the engine really sent, so they reach the
lookup code too.

Checked on every input: the decoder raises nothing but ``DecodeError``, and what it accepts
encodes back to the same message; the engine lets no exception escape, counts every datagram
the decoder rejects as a drop, sends only datagrams of at most 1200 bytes that decode, and
keeps its routing table and store consistent. The tests (tests/test_fuzz.py) run the same
targets briefly under Hypothesis; this command prints inputs per second and every finding.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from nautilus_kad.core.auth import Authenticator
from nautilus_kad.core.codec import EncodeError, decode_datagram, encode_message
from nautilus_kad.core.config import MAX_DATAGRAM, KadConfig
from nautilus_kad.core.engine import KadEngine
from nautilus_kad.core.errors import DecodeError, ValidationError
from nautilus_kad.core.identity import SIGNATURE_BYTES, Identity
from nautilus_kad.core.ids import NodeId
from nautilus_kad.core.messages import (
    Contact,
    Error,
    ErrorCode,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Stored,
    Value,
)
from nautilus_kad.core.records import Record, make_immutable, make_signed, validate_record
from nautilus_kad.core.session import SESSION_MAGIC
from nautilus_kad.sim.auth import SimAuthenticator, SimKeyring

Address = tuple[str, int]


class FindingError(Exception):
    """An input broke a rule the fuzzer checks."""


# --- input generation ------------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A msgpack-able value of a random type and size (hostile edge cases favoured)."""
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind == 0:
        return rng.choice([0, 1, -1, 255, 256, 65535, 65536, 2**32, 2**63 - 1, -(2**63), 2**64 - 1])
    if kind == 1:
        return rng.randrange(-(2**20), 2**20)
    if kind == 2:
        return rng.randbytes(rng.choice([0, 1, 4, 8, 16, 31, 32, 33, 64, rng.randrange(300)]))
    if kind == 3:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
    if kind == 4:
        return None
    if kind == 5:
        return rng.random() < 0.5
    if kind == 6:
        return rng.uniform(-1e9, 1e9)
    if kind == 7:
        return rng.randbytes(rng.randrange(1200))
    if kind == 8:
        return rng.choice(["", "x" * 200, "\u0000", "127.0.0.1"])
    if kind == 9:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 10:
        return {random_value(rng, 3): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [[random_value(rng, depth + 2) for _ in range(rng.randrange(4))]]


def _nodes(tree: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """Paths to every element of the nested lists."""
    found = [path]
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            found.extend(_nodes(item, (*path, i)))
    return found


def mutate_tree(tree: Any, rng: random.Random) -> Any:
    """Replace, drop, duplicate or append somewhere inside a msgpack structure."""
    paths = _nodes(tree)
    path = rng.choice(paths)
    if not path:
        return random_value(rng) if rng.random() < 0.2 else tree
    parent = tree
    for i in path[:-1]:
        parent = parent[i]
    i = path[-1]
    op = rng.randrange(6)
    if op <= 2:
        parent[i] = random_value(rng)
    elif op == 3:
        del parent[i]
    elif op == 4:
        parent.insert(i, random_value(rng))
    else:
        value = parent[i]
        if isinstance(value, int) and not isinstance(value, bool):
            parent[i] = value + rng.choice([-1, 1, 2**31, -(2**31), 2**64])
        elif isinstance(value, bytes):
            parent[i] = value[: rng.randrange(len(value) + 1)] + rng.randbytes(rng.randrange(3))
        else:
            parent[i] = random_value(rng)
    return tree


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif op == 2 and buf:
            del buf[pos % len(buf) : pos % len(buf) + rng.randrange(1, 9)]
        elif op == 3:
            del buf[pos:]
        elif buf:
            buf[pos % len(buf)] = rng.choice([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xDC, 0xDD, 0xFF])
    return bytes(buf)


@dataclass
class Hostile:
    """A peer with real keys that crafts datagrams, plus what it knows of the target."""

    rng: random.Random
    signers: list[Authenticator]
    identities: list[Identity]
    ring: SimKeyring | None
    """The simulator's shared tag key (None: real Ed25519)."""
    pending: list[tuple[bytes, int]] = field(default_factory=list)
    """(txid, peer index) of requests the engine sent to our peers."""
    tokens: dict[int, bytes] = field(default_factory=dict)
    """The write token the engine last gave each of our peers (STOREs then get past it)."""

    @property
    def addresses(self) -> list[Address]:
        return [(f"10.8.0.{n + 1}", 5000 + n) for n in range(len(self.signers))]

    def sample_message(self) -> Message:
        rng = self.rng
        who = rng.choice(self.identities)
        target = NodeId.random(rng)
        observed = ("10.9.0.1", 4000)
        token = rng.randbytes(rng.choice([0, 8]))  # what the decoder accepts
        if self.tokens and rng.random() < 0.7:
            token = rng.choice(list(self.tokens.values()))
        contacts = tuple(
            Contact(i.node_id, f"10.8.0.{n + 1}", 5000 + n) for n, i in enumerate(self.identities)
        ) + tuple(
            Contact(NodeId.random(rng), f"10.7.{n}.{rng.randrange(1, 255)}", 6000 + n)
            for n in range(rng.randrange(12))
        )
        record: Record
        pick = rng.randrange(3)
        if pick == 0:
            record = Record(target, rng.randbytes(rng.randrange(60)), 1_000_000, 600)
        elif pick == 1:
            record = make_immutable(rng.randbytes(rng.randrange(1, 60)), 600)
        else:
            record = make_signed(who, rng.randbytes(rng.randrange(8)), b"v", rng.randrange(9), 600)
        choices: list[Message] = [
            Ping(),
            FindNode(target),
            FindValue(record.key if rng.random() < 0.5 else target),
            Store(record, token, rng.choice([None, 0, 3])),
            Pong(observed),
            Nodes(observed, token, contacts),
            Value(observed, token, record),
            Stored(observed),
            Error(observed, rng.choice(list(ErrorCode)), "no"),
        ]
        return rng.choice(choices)

    def valid(self) -> tuple[bytes, int]:
        """A well-formed signed datagram (answers reuse a txid the engine sent) and who
        signed it."""
        rng = self.rng
        message = self.sample_message()
        txid = rng.randbytes(8)
        who = rng.randrange(len(self.signers))
        answer = not isinstance(message, Ping | FindNode | FindValue | Store)
        if self.pending and answer and rng.random() < 0.8:
            txid, who = rng.choice(self.pending)
        try:
            return encode_message(message, txid, self.signers[who]), who
        except EncodeError:
            return encode_message(Ping(), txid, self.signers[who]), who

    def datagram(self) -> tuple[bytes, int]:
        """One fuzz input and the index of the peer it pretends to come from."""
        rng = self.rng
        roll = rng.random()
        data, who = self.valid()
        if roll < 0.08:
            return rng.randbytes(rng.randrange(1400)), who
        if roll < 0.12:
            return bytes([SESSION_MAGIC]) + rng.randbytes(rng.randrange(80)), who
        if roll < 0.25:
            return mutate_bytes(data, rng), who
        if roll < 0.35:
            return data, who
        payload = data[:-SIGNATURE_BYTES]
        if roll < 0.50:
            payload = mutate_bytes(payload, rng)
        else:
            tree = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            for _ in range(rng.randrange(1, 4)):
                tree = mutate_tree(tree, rng)
            try:
                payload = msgpack.packb(tree, use_bin_type=True)
            except (ValueError, OverflowError, TypeError):
                return data, who
        return payload + self.signers[who].sign(payload), who


def hostile(seed: int, *, real_crypto: bool = True, peers: int = 3) -> Hostile:
    rng = random.Random(seed)
    identities = [Identity.generate(rng) for _ in range(peers)]
    ring = None if real_crypto else SimKeyring(b"fuzz-shared-key-0123456789")
    signers = [Authenticator(i) if ring is None else SimAuthenticator(i, ring) for i in identities]
    return Hostile(rng, signers, identities, ring)


def receiver_for(fuzz: Hostile, identity: Identity) -> Authenticator:
    """The authenticator of the node under test, of the same kind as the peers'."""
    if fuzz.ring is None:
        return Authenticator(identity)
    return SimAuthenticator(identity, fuzz.ring)


# --- targets ---------------------------------------------------------------------------------


def check_decode(data: bytes, receiver: Authenticator, signer: Authenticator) -> bool:
    """The decoder's contract on one input; returns whether it was accepted."""
    try:
        envelope = decode_datagram(data, receiver)
    except DecodeError:
        return False
    except Exception as exc:
        raise FindingError(f"decoder raised {type(exc).__name__}: {exc}") from exc
    try:
        again = encode_message(envelope.message, envelope.txid, signer, envelope.flags)
    except EncodeError as exc:
        raise FindingError(f"accepted a message that cannot be encoded: {exc}") from exc
    if decode_datagram(again, receiver).message != envelope.message:
        raise FindingError(f"round trip changed {envelope.message!r}")
    return True


class EngineTarget:
    """One engine fed fuzz datagrams from a few hostile peers, checked after every input."""

    def __init__(self, seed: int, fuzz: Hostile) -> None:
        self.fuzz = fuzz
        self.now = 1000.0
        identity = Identity.generate(random.Random(seed + 1_000_003))
        self.config = KadConfig(max_records=200, max_pending_requests=64)
        self.engine = KadEngine(
            identity, config=self.config, rng=random.Random(seed + 1), now=self.now
        )
        self.engine.address = ("10.1.0.1", 4000)
        self.engine.auth = receiver_for(fuzz, identity)
        self.receiver = self.engine.auth
        self.addresses = fuzz.addresses
        self.fed = 0
        self.reasons: Counter[str] = Counter()
        self.kick()

    def kick(self) -> None:
        """Start a lookup and a get so that the engine has requests out to our peers."""
        for ident, address in zip(self.fuzz.identities, self.addresses, strict=True):
            self.engine.table.observe(Contact(ident.node_id, *address), self.now)
        self.engine.find_node(NodeId.random(self.fuzz.rng), self.now)
        self.engine.get(NodeId.random(self.fuzz.rng), self.now)
        self.drain()

    def drain(self) -> None:
        engine = self.engine
        fuzz = self.fuzz
        for data, address in engine.datagrams_to_send():
            if len(data) > MAX_DATAGRAM:
                raise FindingError(f"engine sent {len(data)} bytes")
            if data[:1] == bytes([SESSION_MAGIC]):
                continue
            try:
                envelope = decode_datagram(data, fuzz.signers[0])
            except DecodeError as exc:
                raise FindingError(f"engine sent an undecodable datagram: {exc}") from exc
            if address not in self.addresses:
                continue
            who = self.addresses.index(address)
            message = envelope.message
            if isinstance(message, Ping | FindNode | FindValue | Store):
                fuzz.pending.append((envelope.txid, who))
            elif isinstance(message, Nodes | Value) and message.token:
                fuzz.tokens[who] = message.token
        del fuzz.pending[:-64]
        while engine.next_event() is not None:
            pass

    def feed(self, data: bytes, who: int) -> None:
        engine = self.engine
        dropped = engine.stats["rx.dropped"]
        try:
            decode_datagram(data, self.receiver)
            rejected = False
        except DecodeError as exc:
            rejected = data[:1] != bytes([SESSION_MAGIC])
            self.reasons[exc.reason] += 1
        try:
            engine.receive_datagram(data, self.addresses[who], self.now)
            self.fed += 1
            if self.fed % 50 == 0:
                self.now += 0.7
                engine.handle_timer(self.now)
            if self.fed % 200 == 0:
                self.kick()
        except FindingError:
            raise
        except Exception as exc:
            raise FindingError(f"engine raised {type(exc).__name__}: {exc}") from exc
        if rejected and engine.stats["rx.dropped"] != dropped + 1:
            raise FindingError("a datagram the decoder rejects was not counted as a drop")
        self.drain()
        self.check()

    def check(self) -> None:
        """The engine's state is still consistent."""
        engine = self.engine
        table = engine.table
        ids = [c.node_id for c in table]
        if engine.node_id in ids or len(ids) != len(set(ids)) or len(ids) != len(table):
            raise FindingError("routing table holds itself or duplicates")
        if any(size > self.config.k for size in table.bucket_sizes().values()):
            raise FindingError("a bucket holds more than k entries")
        if len(engine.store) > self.config.max_records:
            raise FindingError("the store outgrew max_records")
        if engine.pending_requests > self.config.max_pending_requests:
            raise FindingError("more requests pending than allowed")
        if engine.stats["rx.datagrams"] != self.fed:
            raise FindingError("rx.datagrams does not count every datagram")
        for key in list(engine.store.keys())[:5]:
            stored = engine.store.get(key, self.now)
            if stored is None:
                continue
            if stored.record.key != key:
                raise FindingError("a record is stored under another key")
            try:
                validate_record(stored.record, self.config)
            except ValidationError as exc:
                raise FindingError(f"the store holds an invalid record: {exc}") from exc


# --- the long run ------------------------------------------------------------------------------


@dataclass
class Report:
    inputs: int = 0
    accepted: int = 0
    engine_inputs: int = 0
    findings: list[str] = field(default_factory=list)
    cpu: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)


def run(
    inputs: int, seed: int, *, real_crypto: bool, progress: Callable[[Report], None] | None
) -> Report:
    """Alternate decoder and engine inputs; a fresh engine every 20 000 inputs."""
    report = Report()
    fuzz = hostile(seed, real_crypto=real_crypto)
    receiver = receiver_for(fuzz, Identity.generate(random.Random(seed + 1)))
    engine = EngineTarget(seed, fuzz)
    started = time.process_time()
    for i in range(inputs):
        data, who = fuzz.datagram()
        try:
            if i % 2 == 0:
                report.accepted += check_decode(data, receiver, fuzz.signers[who])
            else:
                engine.feed(data, who)
                report.engine_inputs += 1
        except FindingError as exc:
            report.findings.append(
                f"input {i}: {exc}\n  data={data.hex()}\n"
                + "".join(traceback.format_exception(exc.__cause__ or exc)[-3:])
            )
            engine = EngineTarget(seed + i, fuzz)
        report.inputs = i + 1
        if (i + 1) % 20_000 == 0:
            report.reasons.update(engine.reasons)
            engine = EngineTarget(seed + i, fuzz)
            fuzz.pending.clear()
            engine.kick()
            report.cpu = time.process_time() - started
            if progress is not None:
                progress(report)
    report.reasons.update(engine.reasons)
    report.cpu = time.process_time() - started
    return report


def run_atheris(inputs: int, seed: int) -> int:  # pragma: no cover - needs atheris
    """Coverage-guided fuzzing of the decoder with atheris (libFuzzer)."""
    import atheris  # type: ignore[import-untyped]  # noqa: PLC0415 - optional

    receiver = Authenticator(Identity.generate(random.Random(seed)))
    signer = hostile(seed).signers[0]

    def one(data: bytes) -> None:
        check_decode(data, receiver, signer)

    seeds_dir = Path("/tmp/nautilus-fuzz-corpus")
    seeds_dir.mkdir(exist_ok=True)
    fuzz = hostile(seed)
    for n in range(64):
        (seeds_dir / f"seed{n}").write_bytes(fuzz.valid()[0])
    atheris.instrument_all()  # coverage feedback from every module loaded, the codec included
    atheris.Setup([sys.argv[0], f"-runs={inputs}", f"-seed={seed}", str(seeds_dir)], one)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--real-crypto",
        action="store_true",
        help="Ed25519 on every datagram (slower; default: the simulator's keyed hash)",
    )
    parser.add_argument("--atheris", action="store_true", help="coverage-guided decoder fuzzing")
    args = parser.parse_args(argv)
    if args.atheris:
        return run_atheris(args.inputs, args.seed)

    def progress(report: Report) -> None:
        rate = report.inputs / report.cpu if report.cpu else 0.0
        print(
            f"  {report.inputs:>9,} inputs  {rate:>8,.0f}/s CPU  findings {len(report.findings)}",
            flush=True,
        )

    report = run(args.inputs, args.seed, real_crypto=args.real_crypto, progress=progress)
    rate = report.inputs / report.cpu if report.cpu else 0.0
    decoder = report.inputs - report.engine_inputs
    print(
        f"fuzzed {report.inputs:,} inputs in {report.cpu:.1f} s CPU ({rate:,.0f} inputs/s): "
        f"{decoder:,} to the decoder ({report.accepted:,} accepted), "
        f"{report.engine_inputs:,} to the engine"
    )
    print(
        "decoder rejections by reason: "
        + ", ".join(f"{r} {n}" for r, n in report.reasons.most_common(12))
    )
    print(f"findings: {len(report.findings)}")
    for finding in report.findings[:20]:
        print(finding)
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
