"""A pull request per fetch, collected on one inbox without a task per message.

nats-py's ``PullSubscription.fetch(n)`` waits for each message with its own task and
``wait_for``. Here one ``CONSUMER.MSG.NEXT`` request asks for the whole batch with
``no_wait`` and ``expires``: the server sends what is available (up to the batch) and
ends the burst with a ``404 No Messages`` status, or, when nothing is available, waits
up to ``expires`` for the first message (then ``404``) or answers ``408 Request
Timeout``. Messages land in a buffer from the subscription callback; the fetch wakes
once, when the batch is full or the request's end status arrives.

Each request has its own reply subject (``<inbox>.<n>``) so a late status of an
earlier request never ends a later one. Messages that arrive after their fetch gave
up are leased to this consumer all the same: the next fetch hands them out first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import nats.js.errors as js_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"
HEARTBEAT = "100"
NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"
END_OF_REQUEST = (NO_MESSAGES, REQUEST_TIMEOUT)
EXPIRES_MARGIN = 0.01  # the server's expiry comes this much before the local deadline
LOCAL_GRACE = 0.25  # wait this long past expires for the server's 408


class PullInbox:
    """One durable consumer's pull requests; one fetch at a time (the caller locks)."""

    def __init__(self, nc: NatsClient, stream: str, consumer: str, api_prefix: str) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._seq = 0
        self._buffer: deque[Msg] = deque()
        self._reply = ""  # reply subject of the request in flight ("" = none)
        self._want = 0
        self._end: Msg | None = None  # the status that ended the request in flight
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Subscription | None = None

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_msg)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        self._buffer.clear()
        if sub is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):  # the connection is going: nothing to free
                await sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply:  # a JetStream message always has its ack subject as reply
            self._buffer.append(msg)
            if len(self._buffer) >= self._want:
                self._wake()
            return
        if msg.subject != self._reply:
            return  # the status of a request that already ended
        headers = msg.headers or {}
        if headers.get(STATUS) == HEARTBEAT:
            return
        self._end = msg
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, count: int) -> list[Msg]:
        buffer = self._buffer
        if len(buffer) <= count:
            taken = list(buffer)
            buffer.clear()
            return taken
        return [buffer.popleft() for _ in range(count)]

    async def fetch(self, count: int, timeout: float) -> list[Msg]:
        """Up to ``count`` messages; [] when none arrives within ``timeout`` seconds.

        Raises ``nats.js.errors.APIError`` for any other status (409 consumer deleted
        or leadership change, 503 no responders, 400 ...) that ends an empty request."""
        if self._sub is None:
            raise js_errors.APIError(description="pull subscription closed")
        if self._buffer:
            return self._take(count)
        self._seq += 1
        reply = f"{self._inbox}.{self._seq}"
        expires = max(timeout - EXPIRES_MARGIN, EXPIRES_MARGIN)
        request = b'{"batch":%d,"expires":%d,"no_wait":true}' % (count, int(expires * 1e9))
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._want, self._end, self._reply = count, None, reply
        try:
            await self._nc.publish(self._next_subject, request, reply=reply)
            if len(self._buffer) < count and self._end is None:
                async with asyncio.timeout(timeout + LOCAL_GRACE):
                    await waiter
        except TimeoutError:
            pass  # no end status from the server (connection lost?): what we have
        finally:
            self._waiter, self._reply, self._want = None, "", 0
        end, self._end = self._end, None
        msgs = self._take(count)
        if not msgs and end is not None:
            code = (end.headers or {}).get(STATUS, "")
            if code not in END_OF_REQUEST:
                js_errors.APIError.from_msg(end)
        return msgs
