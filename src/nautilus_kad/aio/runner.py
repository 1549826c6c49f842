"""Run a coroutine on the fastest event loop available.

uvloop roughly halves the per-datagram overhead of the asyncio driver, so the daemon and the
command line use it whenever it is installed; everything still works on the standard loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_available() -> bool:
    """Whether :func:`run` would use uvloop."""
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run ``main`` to completion on a fresh event loop and return its result.

    The loop is uvloop's when it is importable (and ``use_uvloop`` is true), else the standard
    one. Either way ``asyncio.Runner`` semantics hold: Ctrl-C cancels ``main`` (so its
    ``finally`` blocks run) and then raises :class:`KeyboardInterrupt`.
    """
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415
        except ImportError:
            pass
        else:
            # asyncio.run() only takes a loop_factory from Python 3.12; the Runner has one in
            # 3.11 already (and is what uvloop.run() uses there).
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)
