"""The ``nautilus-kad`` command line.

Argument handling runs in-process through click's ``CliRunner``; everything that needs a network
runs the real program in subprocesses against a ``nautilus-kad run`` node. Every node binds
127.0.0.1 on port 0 (the port is read from the node's output) and every wait has a time limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from nautilus_kad import __version__
from nautilus_kad.cli import cli
from nautilus_kad.cli_values import BLOB_LIMIT as BLOB

COMMAND_TIMEOUT = 60.0
"""Upper bound for one short command (start a client node, join, one operation, stop)."""
STARTUP_TIMEOUT = 30.0
"""Upper bound for a ``run`` node to print its address."""
EXIT_TIMEOUT = 15.0
"""Upper bound for a ``run`` node to exit after a signal."""

HOST = "127.0.0.1"
LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")
NODE_ID = re.compile(r"^node id ([0-9a-f]{64})$")


# ==========================================================================================
# Helpers
# ==========================================================================================


def invoke(*args: str) -> Result:
    """Run the command line in-process."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(text: str, *fragments: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in lines[0], text


def kad(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m nautilus_kad ARGS`` to completion (bytes out, so --raw can be checked)."""
    return subprocess.run(
        [sys.executable, "-m", "nautilus_kad", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


@dataclass
class RunningNode:
    """A ``nautilus-kad run`` subprocess whose output is read line by line by two threads
    (both pipes are drained: the node logs every request at INFO)."""

    process: subprocess.Popen[str]
    stdout: queue.Queue[str] = field(default_factory=queue.Queue)
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    port: int = 0
    node_id: str = ""

    @classmethod
    def start(cls, *args: str) -> RunningNode:
        process = subprocess.Popen(
            [sys.executable, "-m", "nautilus_kad", "run", "--host", HOST, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        node = cls(process)
        threading.Thread(target=node._pump_stdout, daemon=True).start()
        threading.Thread(target=node._pump_stderr, daemon=True).start()
        return node

    def _pump_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            self.stdout.put(line.rstrip("\n"))

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern.pattern!r} within {timeout} s; "
                    f"stdout={self.stdout_lines} stderr={self.stderr_lines[-20:]}"
                )
            try:
                line = self.stdout.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self.stdout.empty():
                    time.sleep(0.1)  # let the pump thread deliver the last lines
                    if self.stdout.empty():
                        raise AssertionError(
                            f"node exited with {self.process.returncode} before printing "
                            f"{pattern.pattern!r}; stdout={self.stdout_lines} "
                            f"stderr={self.stderr_lines[-20:]}"
                        ) from None
                continue
            match = pattern.match(line)
            if match:
                return match

    def wait_until_listening(self) -> None:
        self.node_id = self.wait_for_line(NODE_ID, STARTUP_TIMEOUT).group(1)
        self.port = int(self.wait_for_line(LISTENING, STARTUP_TIMEOUT).group(1))

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait (bounded) for the exit status; kill as a last resort."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=EXIT_TIMEOUT)
            raise

    def output(self) -> str:
        time.sleep(0.2)  # the pump threads finish once the pipes close
        return "\n".join(self.stdout_lines)

    def errors(self) -> str:
        time.sleep(0.2)
        return "\n".join(self.stderr_lines)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; keep that from leaking into other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def silent_address() -> Iterator[str]:
    """A loopback UDP port that is bound but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield f"{HOST}:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningNode]]:
    """Two ``run`` nodes: a seed and one that joined through it."""
    key_file = tmp_path_factory.mktemp("keys") / "seed.pem"
    nodes: list[RunningNode] = []
    try:
        seed = RunningNode.start("--key-file", str(key_file))
        nodes.append(seed)
        seed.wait_until_listening()
        second = RunningNode.start("--bootstrap", seed.address)
        nodes.append(second)
        second.wait_until_listening()
        second.wait_for_line(re.compile(r"^joined through "), STARTUP_TIMEOUT)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


# ==========================================================================================
# In-process: help, version, argument errors
# ==========================================================================================


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("command", ["demo", "run", "put", "get", "ping", "lookup"])
def test_help(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: nautilus-kad {command}" in result.stdout


def test_top_level_help_lists_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("demo", "run", "put", "get", "ping", "lookup"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["put", "k", "v", "--bootstrap", "nonsense"], "expected HOST:PORT"),
        (["put", "k", "v", "--bootstrap", "127.0.0.1:70000"], "between 1 and 65535"),
        (["get", "k", "--bootstrap", "127.0.0.1:0"], "between 1 and 65535"),
        (["get", "k", "--bootstrap", "127.0.0.1:http"], "port must be a number"),
        (["get", "k", "--bootstrap", "[::1:7400"], "missing ']'"),
        (["ping", "localhost"], "expected HOST:PORT"),
        (["run", "--port", "70000"], "--port"),
        (["run", "--port", "-1"], "--port"),
        (["lookup", "abcd", "--bootstrap", "127.0.0.1:7400"], "64 hex digits"),
        (["lookup", "zz" + "0" * 62, "--bootstrap", "127.0.0.1:7400"], "64 hex digits"),
        (["put", "k", "x" * (BLOB + 1), "--bootstrap", "127.0.0.1:7400"], f"{BLOB + 1} bytes"),
        (["put", "k", "é" * (BLOB // 2 + 1), "--bootstrap", "127.0.0.1:7400"], f"{BLOB + 2} bytes"),
        (["put", "k", "00" * (BLOB + 1), "--hex", "-b", "127.0.0.1:7400"], f"{BLOB}-byte limit"),
        (["put", "k", "--file", "/no/such/file", "-b", "127.0.0.1:7400"], "cannot read"),
        (
            ["put", "k", "v", "--file", "/etc/hostname", "-b", "127.0.0.1:7400"],
            "exclude each other",
        ),
        (["put", "k", "--file", "-", "--hex", "-b", "127.0.0.1:7400"], "exclude each other"),
        (["put", "--immutable", "k", "--file", "-", "-b", "127.0.0.1:7400"], "no argument"),
        (["put", "-b", "127.0.0.1:7400"], "KEY"),
        (["get", "k", "--out", "f", "--hex", "-b", "127.0.0.1:7400"], "--out writes the bytes"),
        (["put", "k", "xyz", "--hex", "--bootstrap", "127.0.0.1:7400"], "not valid hex"),
        (["get", "k", "--hex", "--raw", "--bootstrap", "127.0.0.1:7400"], "exclude each other"),
        (["get", "k"], "--bootstrap"),
        (["put", "k", "--bootstrap", "127.0.0.1:7400"], "VALUE"),
        (["put", "n", "v", "--signed", "--bootstrap", "127.0.0.1:7400"], "--key-file"),
        (["put", "v", "--signed", "--immutable", "-b", "127.0.0.1:7400"], "exclude each other"),
        (["put", "k", "v", "--immutable", "-b", "127.0.0.1:7400"], "one argument"),
        (["put", "k", "v", "--seq", "3", "-b", "127.0.0.1:7400"], "--signed records only"),
        (["put", "k", "v", "--cas", "3", "-b", "127.0.0.1:7400"], "--signed records only"),
        (
            [
                "put",
                "n",
                "x" * (BLOB + 1),
                "--signed",
                "--key-file",
                "k.pem",
                "-b",
                "127.0.0.1:7400",
            ],
            f"{BLOB}-byte limit of a value",
        ),
        (
            ["put", "n" * 65, "v", "--signed", "--key-file", "k.pem", "-b", "127.0.0.1:7400"],
            "64-byte limit of a name",
        ),
        (
            [
                "put",
                "n",
                "v",
                "--signed",
                "--seq",
                "2",
                "--cas",
                "2",
                "--key-file",
                "k.pem",
                "-b",
                "127.0.0.1:7400",
            ],
            "greater than --cas",
        ),
        (["put", "x" * (BLOB + 1), "--immutable", "-b", "127.0.0.1:7400"], f"{BLOB}-byte limit"),
        (["get", "ab" * 32, "--signed", "--bootstrap", "127.0.0.1:7400"], "NAME"),
        (["get", "abcd", "n", "--signed", "--bootstrap", "127.0.0.1:7400"], "64 hex digits"),
        (["get", "zz", "--immutable", "--bootstrap", "127.0.0.1:7400"], "64 hex digits"),
        (["get", "k", "--show-seq", "--bootstrap", "127.0.0.1:7400"], "--signed records only"),
        (["get", "k", "extra", "--bootstrap", "127.0.0.1:7400"], "unexpected extra argument"),
        (["demo", "--nodes", "1"], "--nodes"),
        (["demo", "--kill-fraction", "1"], "--kill-fraction"),
        (["no-such-command"], "no-such-command"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_argument_errors_are_one_line_usage_errors(args: list[str], fragment: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_one_line_error(result.stderr, fragment)


def test_value_of_exactly_the_limit_is_accepted_by_the_argument_check(
    silent_address: str,
) -> None:
    # 1000 bytes passes validation; the command then fails on the network, not on the value.
    result = invoke("put", "k", "x" * 1000, "--bootstrap", silent_address)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "bootstrap failed")


def test_ping_without_answer_is_a_network_error(silent_address: str) -> None:
    result = invoke("ping", silent_address)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "no answer", silent_address)


@pytest.mark.parametrize("command", [["get", "k"], ["put", "k", "v"], ["lookup", "ab" * 32]])
def test_bootstrap_without_answer_is_a_network_error(
    command: list[str], silent_address: str
) -> None:
    result = invoke(*command, "--bootstrap", silent_address)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "bootstrap failed", silent_address)


def test_unreadable_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "bad.pem"
    key_file.write_text("not a key\n")
    result = invoke("run", "--port", "0", "--key-file", str(key_file))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "key file")


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        result = invoke("run", "--host", HOST, "--port", str(port))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "cannot listen", "in use")


# ==========================================================================================
# Subprocesses: a real node and the one-shot commands against it
# ==========================================================================================


@pytest.mark.integration
def test_module_entry_point_version() -> None:
    result = kad("--version")
    assert result.returncode == 0
    assert __version__ in out(result)


@pytest.mark.integration
def test_put_then_get(network: list[RunningNode]) -> None:
    seed = network[0]
    put = kad("put", "greeting", "hello wörld", "--bootstrap", seed.address)
    assert put.returncode == 0, err(put)
    lines = out(put).splitlines()
    assert re.fullmatch(r"key\s+[0-9a-f]{64}", lines[0]), lines
    acks = re.fullmatch(r"acks\s+(\d+)", lines[1])
    assert acks is not None, lines
    assert int(acks.group(1)) >= 1

    get = kad("get", "greeting", "--bootstrap", seed.address)
    assert get.returncode == 0, err(get)
    assert out(get) == "hello wörld\n"

    as_hex = kad("get", "greeting", "--hex", "--bootstrap", seed.address)
    assert as_hex.returncode == 0, err(as_hex)
    assert out(as_hex) == "hello wörld".encode().hex() + "\n"


@pytest.mark.integration
def test_binary_value_prints_as_hex_and_raw(network: list[RunningNode]) -> None:
    other = network[1]
    put = kad("put", "blob", "ff00fe", "--hex", "--bootstrap", other.address)
    assert put.returncode == 0, err(put)

    get = kad("get", "blob", "--bootstrap", other.address)
    assert get.returncode == 0, err(get)
    assert out(get) == "ff00fe\n"

    raw = kad("get", "blob", "--raw", "--bootstrap", other.address)
    assert raw.returncode == 0, err(raw)
    assert raw.stdout == b"\xff\x00\xfe"


@pytest.mark.integration
def test_get_missing_key(network: list[RunningNode]) -> None:
    get = kad("get", "no-such-key", "--bootstrap", network[0].address)
    assert get.returncode == 1
    assert out(get) == ""
    assert_one_line_error(err(get), "not found")


@pytest.mark.integration
def test_ping(network: list[RunningNode]) -> None:
    seed = network[0]
    ping = kad("ping", seed.address)
    assert ping.returncode == 0, err(ping)
    assert re.fullmatch(
        rf"{seed.node_id} at {re.escape(seed.address)}: rtt \d+\.\d\d ms\n", out(ping)
    ), out(ping)


@pytest.mark.integration
def test_lookup(network: list[RunningNode]) -> None:
    seed, other = network
    lookup = kad("lookup", seed.node_id, "--bootstrap", other.address)
    assert lookup.returncode == 0, err(lookup)
    text = out(lookup)
    assert seed.node_id in text
    assert other.node_id in text
    assert seed.address in text
    # The exact target is at distance 0 and comes first.
    first_row = next(line for line in text.splitlines() if seed.node_id in line)
    assert re.search(r"│\s*1\s*│", first_row), text
    assert re.search(r"│\s*0\s*│\s*$", first_row), text


@pytest.mark.integration
def test_run_node_logs_requests_at_info(network: list[RunningNode]) -> None:
    seed = network[0]
    assert kad("ping", seed.address).returncode == 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any("INFO" in line and "PING from" in line for line in seed.stderr_lines):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no INFO log of the PING: {seed.stderr_lines[-10:]}")


@pytest.mark.integration
def test_one_shot_commands_stay_out_of_routing_tables(network: list[RunningNode]) -> None:
    """Temporary client nodes do not make the run nodes learn peers that vanish at once."""
    seed = network[0]
    before = sum("joined the routing table" in line for line in seed.stderr_lines)
    for _ in range(3):
        assert kad("get", "greeting", "--bootstrap", seed.address).returncode in (0, 1)
    time.sleep(0.2)
    after = sum("joined the routing table" in line for line in seed.stderr_lines)
    assert after == before


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sig", "status"),
    [
        pytest.param(signal.SIGINT, 0, id="SIGINT"),
        pytest.param(signal.SIGTERM, 0, id="SIGTERM"),
    ],
)
def test_run_stops_cleanly_on_signal(sig: int, status: int) -> None:
    node = RunningNode.start()
    try:
        node.wait_until_listening()
        node.wait_for_line(re.compile(r"^no --bootstrap given"), STARTUP_TIMEOUT)
    finally:
        code = node.stop(sig)
    assert code == status
    assert f"node {node.node_id[:8]} stopped. Goodbye." in node.output()
    assert "Traceback" not in node.errors()


@pytest.mark.integration
def test_key_file_keeps_the_node_id(tmp_path: Path) -> None:
    key_file = tmp_path / "node.pem"
    ids = []
    for _ in range(2):
        node = RunningNode.start("--key-file", str(key_file))
        try:
            node.wait_until_listening()
        finally:
            node.stop()
        ids.append(node.node_id)
    assert key_file.exists()
    assert ids[0] == ids[1]


@pytest.mark.integration
def test_run_with_unreachable_bootstrap_fails(silent_address: str) -> None:
    node = RunningNode.start("--bootstrap", silent_address)
    try:
        code = node.process.wait(timeout=COMMAND_TIMEOUT)
    finally:
        node.stop(signal.SIGKILL)
    assert code == 1
    errors = [line for line in node.errors().splitlines() if line.startswith("error:")]
    assert errors == [f"error: bootstrap failed: no answer from {silent_address}"]
    assert "Traceback" not in node.errors()


@pytest.mark.integration
def test_demo_small_network() -> None:
    result = kad("demo", "--nodes", "12", "--values", "10", "--seed", "7", timeout=120)
    assert result.returncode == 0, out(result) + err(result)
    text = out(result)
    assert "get success" in text
    assert text.count("10/10 (100.0%)") >= 3  # puts, gets before and after the crash
    assert "12" in text
    assert "8 (4 crashed)" in text
    assert "127.0.0.1:" in text  # the line with a few node ids and ports
    assert "Traceback" not in err(result)


# ==========================================================================================
# Signed and immutable records
# ==========================================================================================


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in text.splitlines())


@pytest.mark.integration
def test_signed_records_from_the_command_line(network: list[RunningNode], tmp_path: Path) -> None:
    seed, other = network
    key_file = tmp_path / "owner.pem"
    put = kad(
        "put", "--signed", "profile", "v1", "--key-file", str(key_file), "--bootstrap", seed.address
    )
    assert put.returncode == 0, err(put)
    fields = _fields(out(put))
    assert re.fullmatch(r"[0-9a-f]{64}", fields["key"]) and fields["seq"] == "1"
    assert int(fields["acks"]) >= 1
    owner = fields["owner"]
    assert key_file.exists()

    get = kad("get", "--signed", owner, "profile", "--bootstrap", other.address)
    assert get.returncode == 0, err(get)
    assert out(get) == "v1\n"

    again = kad(
        "put",
        "--signed",
        "profile",
        "v2",
        "--key-file",
        str(key_file),
        "--bootstrap",
        other.address,
    )
    assert again.returncode == 0, err(again)
    assert _fields(out(again))["seq"] == "2"
    shown = kad("get", "--signed", owner, "profile", "--show-seq", "--bootstrap", seed.address)
    assert out(shown) == "seq 2\nv2\n", err(shown)

    cas = kad(
        "put",
        "--signed",
        "profile",
        "v3",
        "--cas",
        "1",
        "--key-file",
        str(key_file),
        "--bootstrap",
        seed.address,
    )
    assert cas.returncode == 1
    assert out(cas) == ""
    assert_one_line_error(err(cas), "compare-and-swap failed", "sequence 2")

    stale = kad(
        "put",
        "--signed",
        "profile",
        "old",
        "--seq",
        "1",
        "--key-file",
        str(key_file),
        "--bootstrap",
        seed.address,
    )
    assert stale.returncode == 1
    assert_one_line_error(err(stale), "stale sequence number")

    ok = kad(
        "put",
        "--signed",
        "profile",
        "v3",
        "--cas",
        "2",
        "--key-file",
        str(key_file),
        "--bootstrap",
        seed.address,
    )
    assert ok.returncode == 0, err(ok)
    assert _fields(out(ok))["seq"] == "3"

    missing = kad("get", "--signed", owner, "nothing", "--bootstrap", seed.address)
    assert missing.returncode == 1
    assert_one_line_error(err(missing), "not found")


@pytest.mark.integration
def test_signed_put_with_a_running_nodes_key_file(network: list[RunningNode]) -> None:
    # The seed runs with a key file; publishing with that same key must not clash with the
    # running node's id (the client node has an identity of its own).
    seed = network[0]
    key_file = Path(next(a for a in seed.process.args[1:] if str(a).endswith("seed.pem")))
    put = kad(
        "put", "--signed", "status", "up", "--key-file", str(key_file), "--bootstrap", seed.address
    )
    assert put.returncode == 0, err(put)
    owner = _fields(out(put))["owner"]
    assert owner == next(
        line.split()[-1] for line in seed.stdout_lines if line.startswith("public key ")
    )
    get = kad("get", "--signed", owner, "status", "--bootstrap", seed.address)
    assert out(get) == "up\n", err(get)


@pytest.mark.integration
def test_immutable_records_from_the_command_line(network: list[RunningNode]) -> None:
    seed, other = network
    put = kad("put", "--immutable", "content-addressed", "--bootstrap", seed.address)
    assert put.returncode == 0, err(put)
    key = _fields(out(put))["key"]
    assert key == hashlib.sha256(b"content-addressed").hexdigest()
    get = kad("get", "--immutable", key, "--bootstrap", other.address)
    assert get.returncode == 0, err(get)
    assert out(get) == "content-addressed\n"
    absent = kad("get", "--immutable", "00" * 32, "--bootstrap", other.address)
    assert absent.returncode == 1
    assert_one_line_error(err(absent), "not found")
