"""SIGTERM for the commands that start servers (bench, demo): cancel, then clean up.

Python's default SIGTERM ends the process at once, leaving the nats-server,
PostgreSQL, echo and plugin processes a command started running. Cancelling the
main coroutine instead runs every ``finally`` and ``async with`` exit, so they
stop with it; the caller sees CancelledError.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EXIT_SIGTERM = 128 + signal.SIGTERM


async def cancel_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; a SIGTERM meanwhile cancels it."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
