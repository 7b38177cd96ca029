"""LISTEN/NOTIFY wake-ups for waiting fetches. Best effort: polling stays authoritative.

One dedicated connection (outside the pool) LISTENs on the channels of the
streams this process fetches from. A notification sets the channel's current
``asyncio.Event``; a waiter takes the event before it polls, so a message
published while it polls still wakes it. After any connection failure every
waiter is woken (notifications may have been missed) and the session is
re-established after ``retry_interval``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re

import psycopg
from psycopg import sql

from ...core.errors import redact

CHANNEL_PREFIX = "eventbus_"
_SAFE_CHANNEL = re.compile(r"[a-z0-9_]{1,63}")
_NOTIFY_SLICE = 0.5  # how long one notifies() pass runs before new channels are LISTENed


@functools.lru_cache(maxsize=1024)
def channel_name(stream: str) -> str:
    """The Go plugin's NOTIFY channel of a stream: ``eventbus_`` + lower-case name."""
    channel = CHANNEL_PREFIX + stream.lower()
    if not _SAFE_CHANNEL.fullmatch(channel):
        raise ValueError(f"unsafe LISTEN channel {channel!r}")
    return channel


class Notifier:
    """Owns the LISTEN connection and its task; ``stop()`` cancels and awaits it."""

    def __init__(self, dsn: str, log: logging.Logger, retry_interval: float) -> None:
        self._dsn = dsn
        self._log = log
        self._retry = retry_interval
        self._events: dict[str, asyncio.Event] = {}
        self._wanted: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pgchannel-listen")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.wake_all()

    def event(self, channel: str) -> asyncio.Event:
        """The event the next notification on ``channel`` will set."""
        self._wanted.add(channel)
        found = self._events.get(channel)
        if found is None:
            found = self._events[channel] = asyncio.Event()
        return found

    def wake(self, channel: str) -> None:
        found = self._events.pop(channel, None)
        if found is not None:
            found.set()

    def wake_all(self) -> None:
        for channel in list(self._events):
            self.wake(channel)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except (psycopg.Error, OSError) as exc:
                self._log.debug("LISTEN session ended: %s", redact(str(exc)))
            self.listening = False
            self.wake_all()
            await asyncio.sleep(self._retry)

    async def _session(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=5)
        async with conn:
            listened: set[str] = set()
            self.listening = True
            self.wake_all()  # whatever was published while we were away
            while True:
                for channel in sorted(self._wanted - listened):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    listened.add(channel)
                async for note in conn.notifies(timeout=_NOTIFY_SLICE):
                    self.wake(note.channel)
