"""``async with`` for what a process starts: a server, the plugin, a bench run.

Entering starts it; leaving tears it down. A start that fails or is cancelled
halfway tears down what it got to, so no server process, socket or temporary
directory outlives the block. :func:`cancel_and_wait` stops a background task.
"""

from __future__ import annotations

import abc
import asyncio
from types import TracebackType
from typing import Self


class Service(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def teardown(self) -> None:
        """Stop whatever is running and release it; safe after a partial start."""

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.teardown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.teardown()


async def cancel_and_wait(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has finished, cancelling again if it carries on.

    For loops with no cleanup of their own: a repeated cancel would cut a
    ``finally`` block short.

    On Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives as its
    inner future completes (nats-py's ``flush`` uses it), so a loop can swallow one
    cancel and go on to wait forever; an owner awaiting it would hang with it."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled():
        task.result()  # a task that failed on its own raises here, as awaiting it would
