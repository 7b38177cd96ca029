"""``async with`` for what a process starts: a server, the plugin, a bench run.

Entering starts it; leaving tears it down. A start that fails or is cancelled
halfway tears down what it got to, so no server process, socket or temporary
directory outlives the block.
"""

from __future__ import annotations

import abc
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
