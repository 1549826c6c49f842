"""``--profile secure`` on the command line: disjoint-path lookups end to end over loopback."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from test_cli import STARTUP_TIMEOUT, RunningNode, err, invoke, kad, out

from nautilus_kad.cli import profile_config


def test_profiles_name_configurations() -> None:
    assert profile_config("default").disjoint_paths == 1
    secure = profile_config("secure")
    assert secure.disjoint_paths == 4
    assert secure.signed_get_quorum > profile_config("default").signed_get_quorum


@pytest.mark.parametrize("command", ["run", "put", "get", "lookup"])
def test_profile_option_is_offered(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "--profile [default|secure]" in result.output


def test_unknown_profile_is_a_usage_error() -> None:
    result = invoke("get", "k", "--bootstrap", "127.0.0.1:1", "--profile", "paranoid")
    assert result.exit_code == 2
    assert "paranoid" in result.output


@pytest.fixture(scope="module")
def secure_network() -> Iterator[list[RunningNode]]:
    """Three ``run --profile secure`` nodes."""
    nodes: list[RunningNode] = []
    try:
        seed = RunningNode.start("--profile", "secure")
        nodes.append(seed)
        seed.wait_until_listening()
        for _ in range(2):
            node = RunningNode.start("--bootstrap", seed.address, "--profile", "secure")
            nodes.append(node)
            node.wait_until_listening()
            node.wait_for_line(re.compile(r"^joined through "), STARTUP_TIMEOUT)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.integration
def test_secure_put_get_and_lookup(secure_network: list[RunningNode]) -> None:
    seed, other, third = secure_network
    put = kad("put", "profiled", "value", "--bootstrap", seed.address, "--profile", "secure")
    assert put.returncode == 0, err(put)
    get = kad("get", "profiled", "--bootstrap", other.address, "--profile", "secure")
    assert get.returncode == 0, err(get)
    assert out(get) == "value\n"
    lookup = kad("lookup", third.node_id, "--bootstrap", seed.address, "--profile", "secure")
    assert lookup.returncode == 0, err(lookup)
    assert third.node_id in out(lookup) and seed.node_id in out(lookup)
