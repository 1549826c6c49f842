"""Dependency rules of DESIGN §2, checked on the source with ``ast``.

* ``core`` is sans-I/O: no asyncio, socket, time, selectors, threading or subprocess, no
  module-level ``random`` functions (randomness comes from an injected ``random.Random``), and
  only the stdlib, msgpack and cryptography from outside the package;
* ``core`` imports nothing from ``aio``, ``sim`` or the CLI;
* ``aio`` and ``sim`` never import each other.
"""

from __future__ import annotations

import ast
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "nautilus_kad"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

FORBIDDEN_IN_CORE = frozenset({"asyncio", "socket", "time", "selectors", "threading", "subprocess"})
ALLOWED_THIRD_PARTY = frozenset({"msgpack", "cryptography", "nacl"})  # nacl: libsodium Ed25519
RANDOM_FUNCTIONS = frozenset(
    name
    for name in dir(random)
    if not name.startswith("_")
    and callable(getattr(random, name))
    and not isinstance(getattr(random, name), type)
)
"""The bound methods of random's hidden global generator (random, randint, choice, ...)."""


@dataclass(frozen=True)
class Import:
    module: str
    """The absolute module imported (for ``from m import n``: ``m``)."""
    names: tuple[str, ...]
    """For ``from m import n``: the names; empty for ``import m``."""
    line: int

    def candidates(self) -> list[str]:
        """Every module this import could load: ``m`` and, for ``from m import n``, ``m.n``."""
        return [self.module, *(f"{self.module}.{n}" for n in self.names if n != "*")]


def module_name(path: Path, root: Path = SRC) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve(module: str | None, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def find_imports(source: str, current: str, is_package: bool = False) -> list[Import]:
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, current, is_package)
            names = tuple(alias.name for alias in node.names)
            found.append(Import(target, names, node.lineno))
    return found


def global_random_uses(source: str) -> list[str]:
    """Uses of random's module-level functions: ``random.randint(...)``, aliases included,
    and ``from random import choice``."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "random":
                    aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom) and node.module == "random" and node.level == 0:
            for alias in node.names:
                if alias.name in RANDOM_FUNCTIONS or alias.name == "*":
                    problems.append(f"line {node.lineno}: from random import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr in RANDOM_FUNCTIONS
        ):
            problems.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return problems


def sources(subpackage: str) -> list[Path]:
    root = SRC / subpackage
    if root.is_dir():
        return sorted(root.rglob("*.py"))
    single = SRC / f"{subpackage}.py"
    return [single] if single.is_file() else []


def imports_of(path: Path) -> list[Import]:
    name, is_package = module_name(path)
    return find_imports(path.read_text(encoding="utf-8"), name, is_package)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


CORE_FILES = sources("core")


# --- the checker checks itself ---------------------------------------------------------------


def test_checker_finds_forbidden_imports() -> None:
    src = "import asyncio\nimport time as t\nfrom socket import socket\nimport os.path\n"
    mods = [i.module for i in find_imports(src, "nautilus_kad.core.x")]
    assert mods == ["asyncio", "time", "socket", "os.path"]


def test_checker_resolves_relative_imports() -> None:
    src = (
        "from .ids import NodeId\nfrom ..sim import network\nfrom .. import aio\nfrom . import x\n"
    )
    got = find_imports(src, "nautilus_kad.core.engine")
    assert [i.module for i in got] == [
        "nautilus_kad.core.ids",
        "nautilus_kad.sim",
        "nautilus_kad",
        "nautilus_kad.core",
    ]
    assert "nautilus_kad.aio" in got[2].candidates()
    pkg = find_imports("from .ids import NodeId\n", "nautilus_kad.core", is_package=True)
    assert pkg[0].module == "nautilus_kad.core.ids"


def test_checker_finds_global_random() -> None:
    assert {"random", "randint", "choice", "shuffle", "getrandbits", "sample", "randbytes"} <= (
        RANDOM_FUNCTIONS
    )
    assert "Random" not in RANDOM_FUNCTIONS
    bad = (
        "import random\n"
        "x = random.random()\n"
        "y = random.randint(1, 2)\n"
        "f = random.choice\n"
        "import random as r\n"
        "r.shuffle([])\n"
        "from random import getrandbits\n"
    )
    assert len(global_random_uses(bad)) == 5
    good = (
        "import random\n"
        "rng = random.Random(4)\n"
        "def f(rng: random.Random) -> int:\n"
        "    return rng.randint(1, 6) + rng.getrandbits(8)\n"
        "from random import Random\n"
    )
    assert global_random_uses(good) == []


# --- core --------------------------------------------------------------------------------------


def test_core_sources_exist() -> None:
    names = {p.name for p in CORE_FILES}
    assert {"ids.py", "codec.py", "routing.py", "lookup.py", "engine.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_is_sans_io(path: Path) -> None:
    bad = [
        f"line {imp.line}: {imp.module}"
        for imp in imports_of(path)
        if imp.module.split(".")[0] in FORBIDDEN_IN_CORE
    ]
    assert bad == [], f"{path.name} imports I/O or clock modules"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_uses_no_global_random(path: Path) -> None:
    assert global_random_uses(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_depends_only_on_stdlib_msgpack_cryptography(path: Path) -> None:
    bad = []
    for imp in imports_of(path):
        top = imp.module.split(".")[0]
        if top == PACKAGE:
            if not _within(imp.module, f"{PACKAGE}.core"):
                bad.append(imp.module)
            bad.extend(
                c
                for c in imp.candidates()
                if any(_within(c, f"{PACKAGE}.{p}") for p in ("aio", "sim", "cli", "__main__"))
            )
        elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
            bad.append(imp.module)
    assert bad == [], f"{path.name} imports outside its layer"


# --- aio and sim ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("package", "other"), [("aio", "sim"), ("sim", "aio")])
def test_drivers_do_not_import_each_other(package: str, other: str) -> None:
    files = sources(package)
    if not files:
        pytest.skip(f"{PACKAGE}.{package} does not exist yet")
    forbidden = f"{PACKAGE}.{other}"
    bad = [
        f"{path.name} line {imp.line}: {c}"
        for path in files
        for imp in imports_of(path)
        for c in imp.candidates()
        if _within(c, forbidden)
    ]
    assert bad == []


@pytest.mark.parametrize("package", ["aio", "sim"])
def test_drivers_do_not_import_cli(package: str) -> None:
    files = sources(package)
    if not files:
        pytest.skip(f"{PACKAGE}.{package} does not exist yet")
    bad = [
        f"{path.name}: {c}"
        for path in files
        for imp in imports_of(path)
        for c in imp.candidates()
        if _within(c, f"{PACKAGE}.cli") or _within(c, f"{PACKAGE}.__main__")
    ]
    assert bad == []


# --- the engine is a facade over small components (issue 10) ---------------------------------

ENGINE_MAX_LINES = 600
CORE_MODULE_MAX_LINES = 500

COMPONENTS = (
    "context", "tokens", "holdings", "pending", "wire", "rpc", "lookups", "gets", "put",
    "bootstrap", "fanout", "handoff", "replicator", "peers", "serve", "fields",
)  # fmt: skip


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_engine_is_a_facade_of_at_most_600_lines() -> None:
    assert _lines(SRC / "core" / "engine.py") <= ENGINE_MAX_LINES


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_no_other_core_module_is_over_500_lines(path: Path) -> None:
    if path.name == "engine.py":
        return
    assert _lines(path) <= CORE_MODULE_MAX_LINES, f"{path.name}: split it along what it owns"


def test_the_components_exist() -> None:
    names = {p.stem for p in CORE_FILES}
    assert set(COMPONENTS) <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_no_component_imports_the_engine(path: Path) -> None:
    """Components talk upward only through objects and callables given at construction."""
    if path.name in ("engine.py", "__init__.py"):
        return
    bad = [
        f"line {imp.line}: {c}"
        for imp in imports_of(path)
        for c in imp.candidates()
        if _within(c, f"{PACKAGE}.core.engine")
    ]
    assert bad == []


def _isinstance_targets(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and len(node.args) == 2
        ):
            for sub in ast.walk(node.args[1]):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
        elif isinstance(node, ast.MatchClass) and isinstance(node.cls, ast.Name):
            names.add(node.cls.id)
    return names


def test_no_switch_over_query_kinds() -> None:
    """Requests report to their owner (rpc.Owner); nothing dispatches on the query's class."""
    query_classes = set()
    for path in CORE_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and {"on_answer", "on_timeout"} <= {
                f.name for f in node.body if isinstance(f, ast.FunctionDef)
            }:
                query_classes.add(node.name)
    assert {"LookupQuery", "BootstrapQuery", "ProbeQuery"} <= query_classes
    for path in CORE_FILES:
        checked = _isinstance_targets(ast.parse(path.read_text(encoding="utf-8")))
        switched = checked & query_classes - {"Owner"}
        if path.name == "engine.py":
            switched -= {"LookupQuery"}  # lookup_state: an accessor, not a dispatch
        assert switched == set(), f"{path.name} switches on {switched}"


def test_the_checks_catch_what_they_guard() -> None:
    src = (
        "match q:\n    case LookupQuery():\n        pass\n"
        "if isinstance(q, (ProbeQuery, X)):\n    pass\n"
    )
    assert _isinstance_targets(ast.parse(src)) == {"LookupQuery", "ProbeQuery", "X"}
    imp = find_imports("from .engine import KadEngine\n", f"{PACKAGE}.core.peers")
    assert any(_within(c, f"{PACKAGE}.core.engine") for c in imp[0].candidates())


def test_one_percentile() -> None:
    """Latency tables everywhere (simulator, demo, benchmarks) use sim.report.percentile."""
    root = SRC.parents[1]
    defined = [
        f"{path.relative_to(root)}:{node.name}"
        for path in [*SRC.rglob("*.py"), *(root / "benchmarks").rglob("*.py")]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == "percentile"
    ]
    assert defined == ["src/nautilus_kad/sim/report.py:percentile"]
