"""Publish-side ``msg_id`` deduplication for Kafka (pure: no I/O).

Kafka's idempotent producer drops the retries of one producer session; it knows
nothing of the bus's ``msg_id``. Each stream gets a bounded store of the ids
published within its ``duplicate_window``: a second publish of an id still in
the store is not sent and answers with the first one's sequence. A publish of
an id that is still in flight waits for the first's outcome. The store lives
in the provider; the provider fills it from the stream's topics when it first
publishes with a msg_id (so a restarted publisher remembers what it sent), and
it cannot see what another process publishes after that (docs/kafka.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    sequence: int  # 0 while the first publish is in flight
    expires: float  # monotonic
    done: asyncio.Future[int] | None = None


class DedupStore:
    """msg_id -> sequence for ``window`` seconds, at most ``capacity`` ids (oldest go)."""

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        self._ids: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def _expire(self, now: float) -> None:
        while self._ids:
            key, entry = next(iter(self._ids.items()))
            if entry.expires > now and len(self._ids) <= self.capacity:
                return
            if entry.done is not None and not entry.done.done():
                return  # in flight: its publisher removes or completes it
            del self._ids[key]

    def seen(self, msg_id: str, now: float | None = None) -> _Entry | None:
        """The entry of ``msg_id`` when it is within the window."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        entry = self._ids.get(msg_id)
        if entry is None or (entry.expires <= now and entry.done is None):
            return None
        return entry

    def begin(self, msg_id: str, now: float | None = None) -> asyncio.Future[int]:
        """Mark ``msg_id`` as being published; complete with :meth:`end` or :meth:`abort`."""
        now = time.monotonic() if now is None else now
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ids[msg_id] = _Entry(0, now + self.window, done)
        self._ids.move_to_end(msg_id)
        return done

    def end(self, msg_id: str, sequence: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        entry = self._ids.get(msg_id)
        if entry is not None and entry.done is not None and not entry.done.done():
            entry.done.set_result(sequence)
        self.remember(msg_id, sequence, now)

    def abort(self, msg_id: str, exc: BaseException) -> None:
        """The publish failed: forget the id (a retry publishes it again)."""
        entry = self._ids.pop(msg_id, None)
        if entry is not None and entry.done is not None and not entry.done.done():
            entry.done.set_exception(exc)
            entry.done.exception()  # retrieved here: a waiter may not exist

    def remember(self, msg_id: str, sequence: int, published: float) -> None:
        """Record an id published at monotonic time ``published`` (also when loading)."""
        expires = published + self.window
        if expires <= time.monotonic():
            return
        self._ids[msg_id] = _Entry(sequence, expires)
        self._ids.move_to_end(msg_id)
        self._expire(time.monotonic())
