"""Event loop choice for the bench process and the processes it starts."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..core.signals import cancel_on_sigterm

T = TypeVar("T")
LOOPS = ("asyncio", "uvloop")


def default_loop() -> str:
    """uvloop when installed: the plugin process runs on it too (like for like)."""
    return "uvloop" if uvloop_available() else "asyncio"


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_loop(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """``asyncio.run`` on the default loop or on uvloop; SIGTERM cancels ``coro``.

    Cancelling (instead of dying at once) runs every ``finally`` and ``async with``
    exit, so the servers a run started (nats-server, PostgreSQL, the echo and
    plugin processes) are stopped with it. The caller sees CancelledError."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(cancel_on_sigterm(coro))
    return asyncio.run(cancel_on_sigterm(coro))
