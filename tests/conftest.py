"""Session-wide test settings.

Every test session gets its own per-user state directory: a daemon started by a test writes
its api file there, never into the real ``~/.local/state``, and the command-line clients
the tests run find only the tests' own daemons.

The suite runs on two pytest-xdist workers (``-n 2 --dist loadgroup``, the README's test
command) so that one core's simulator work overlaps the other's waits on real timers. Three
rules keep that from changing what any test shows:

* a test marked ``solo`` runs with no other test beside it: the other worker finishes its
  current test and then waits (see :func:`_solo_or_shared`). For the real-timer tests that
  fail when starved of CPU (``test_durability_net`` under a loaded machine);
* tests that share a module-scoped fixture (a formed network, a browser) go to one worker
  together (an ``xdist_group`` per module), so the fixture is built once, not once per
  worker; the ``natlab`` tests all go to one worker, so two NAT labs never run at once;
* ``solo`` and then ``slow`` tests are handed out first, so that no long scenario starts
  last while the other worker has nothing left to do.

Without xdist (``-n 0``, or a single test) the lock is never contended and nothing changes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("xdg-state")
    saved = {name: os.environ.get(name) for name in ("XDG_STATE_HOME", "NAUTILUS_KAD_API")}
    os.environ["XDG_STATE_HOME"] = str(state)
    os.environ.pop("NAUTILUS_KAD_API", None)
    try:
        yield state
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- scheduling on xdist workers ---------------------------------------------------------


def pytest_itemcollected(item: pytest.Item) -> None:
    """The NAT lab tests go to one xdist worker, one after another: two labs never run at
    once (each is wall-bound, so the other worker's CPU work overlaps them). Users of a
    module-scoped fixture go to one worker together. (Marked here, at collection, so that
    ``pytest_collection_modifyitems`` sees the marks.)"""
    if item.get_closest_marker("natlab") is not None:
        item.add_marker(pytest.mark.xdist_group("natlab"))
        return
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is None:
        return
    for defs in fixtureinfo.name2fixturedefs.values():
        if any(d.scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))  # type: ignore[attr-defined]
            return


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``solo`` and then ``slow`` tests first (a stable sort: the rest keep their order);
    and ``--dist loadgroup`` made to work on pytest 9.2.

    xdist tells its scheduler an item's group by appending ``@group`` to the item's nodeid,
    through ``item._nodeid``; pytest 9.2 keeps the nodeid in ``item._id`` instead, so the
    suffix never shows and every grouped test is scheduled alone (seen here: a module-scoped
    fixture built once per worker). Set it where pytest 9.2 reads it, once."""
    items.sort(key=lambda i: (not i.get_closest_marker("solo"), not i.get_closest_marker("slow")))
    if not getattr(config.option, "loadgroup", False):  # set on xdist workers only
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})  # fmt: skip
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(groups)}")


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _solo_or_shared(item: pytest.Item) -> Iterator[None]:
    """A readers-writer lock between the workers of one run: every test holds the room
    shared, a ``solo`` test holds it alone. The turnstile stops new shared holders while a
    solo test waits, so it is not starved by the other worker's next tests."""
    if not hasattr(item.config, "workerinput"):  # not an xdist worker
        yield
        return
    # Each worker's basetemp is <the run's basetemp>/popen-gwN: the parent is this run's.
    run_dir = item.config._tmp_path_factory.getbasetemp().parent  # type: ignore[attr-defined]
    turnstile, room = run_dir / "solo-turnstile.lock", run_dir / "solo-room.lock"
    if item.get_closest_marker("solo") is not None:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(room, fcntl.LOCK_EX):
            yield
    else:
        with _flock(turnstile, fcntl.LOCK_EX):
            pass
        with _flock(room, fcntl.LOCK_SH):
            yield


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outermost: the wait is not the test's time
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _solo_or_shared(item):
        yield
