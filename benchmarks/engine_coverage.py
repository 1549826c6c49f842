"""Statement coverage of the engine's components: is every line the split moved run by the
behaviour fingerprint or by the engine's own tests? (issue 10, point 2)

    python -m benchmarks.engine_coverage            # full fingerprint + the engine tests
    python -m benchmarks.engine_coverage --quick    # the quick fingerprint instead
    python -m benchmarks.engine_coverage --missing  # ... and list the lines never run
    python -m benchmarks.engine_coverage --data DIR [--no-fingerprint]  # keep / reuse data

It runs, each under ``coverage run`` (core/ only, statements, no branches):

* ``python -m benchmarks.fingerprint [--quick]``: the seeded simulator scenarios whose
  digests prove a structural change changed nothing;
* ``python -m pytest`` on :data:`TESTS` (in one process: coverage must see it),

then combines the data and prints one row per module of :data:`MODULES` (the facade and
every component it was split into) and the total. Needs the ``coverage`` package (part of
the ``test`` extra). ``--data DIR`` keeps the data files in DIR; with ``--no-fingerprint``
only the tests run again and the fingerprint's data already in DIR is reused (valid while the
sources did not change). Benchmarks report; this one never asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "nautilus_kad" / "core"

MODULES = (
    "engine", "context", "wire", "pending", "rpc", "tokens", "serve", "peers", "holdings",
    "lookups", "lookup", "lookup_disjoint", "gets", "put", "fanout", "bootstrap", "handoff",
    "replicator", "fields", "session", "session_table",
)  # fmt: skip
"""The facade and the components the split moved its code into (core/<name>.py)."""

TESTS = (
    "test_fanout", "test_put_get", "test_peers", "test_rpc", "test_serve", "test_wire",
    "test_bootstrap", "test_query_timeouts", "test_replication", "test_record_kinds",
    "test_sessions", "test_abuse", "test_storage_limits", "test_persistence", "test_store_at",
    "test_lookup", "test_lookup_disjoint", "test_lookup_addresses", "test_lookup_corners",
    "test_codec",
    "test_routing", "test_sim_leave", "test_fuzz", "test_engine_timers",
)  # fmt: skip
"""The engine's sans-I/O tests (tests/<name>.py)."""


def run(data_file: Path, args: list[str]) -> int:
    """``python -m coverage run`` with ``args``, into ``data_file`` (which it replaces)."""
    env = dict(os.environ, COVERAGE_FILE=str(data_file), PYTHONPATH=str(ROOT / "src"))
    command = [sys.executable, "-m", "coverage", "run", f"--source={CORE}"]
    return subprocess.run(command + args, cwd=ROOT, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick fingerprint")
    parser.add_argument("--missing", action="store_true", help="list the lines never run")
    parser.add_argument("--data", type=Path, help="keep the data files in this directory")
    parser.add_argument("--no-fingerprint", action="store_true", help="reuse its data in --data")
    args = parser.parse_args()
    if args.no_fingerprint and args.data is None:
        parser.error("--no-fingerprint needs --data")
    with tempfile.TemporaryDirectory(prefix="engine-coverage-") as tmp:
        data = (args.data or Path(tmp) / "data").resolve()
        data.mkdir(parents=True, exist_ok=True)
        for old in data.glob(".coverage*"):
            if not (args.no_fingerprint and old.name.startswith(".coverage.fingerprint")):
                old.unlink()
        if not args.no_fingerprint:
            fingerprint = ["-m", "benchmarks.fingerprint"] + (["--quick"] if args.quick else [])
            if run(data / ".coverage.fingerprint", fingerprint) != 0:
                print("the fingerprint failed", file=sys.stderr)
        tests = [str(ROOT / "tests" / f"{name}.py") for name in TESTS]
        pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        if run(data / ".coverage.tests", pytest) != 0:
            print("some tests failed (coverage still reported)", file=sys.stderr)
        # Combined from copies: the originals stay for a later --no-fingerprint run.
        work = Path(tmp)
        copies = [shutil.copy(part, work / part.name) for part in data.glob(".coverage.*")]
        env = dict(os.environ, COVERAGE_FILE=str(work / ".coverage"))
        combine = [sys.executable, "-m", "coverage", "combine", "-q", *map(str, copies)]
        subprocess.run(combine, cwd=ROOT, env=env, check=True)
        files = [str(CORE / f"{name}.py") for name in MODULES]
        report = [sys.executable, "-m", "coverage", "report", f"--include={','.join(files)}"]
        report += ["--show-missing"] if args.missing else []
        return subprocess.run(report, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
