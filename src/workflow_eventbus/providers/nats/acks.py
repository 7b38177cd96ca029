"""Acks off the hot path: written in batches, confirmed in the background.

``settle`` puts its acks in an outbox and returns. A writer task puts what the
outbox holds on the connection ``ACK_LINGER`` after the first of them (or at
once when ``ACK_BATCH`` are waiting), so messages finished one at a time by
concurrent handlers share one socket write instead of paying one each. Every
command that must see the acks applied first (a fetch, consumer info, an
explicit confirm, close) calls :meth:`AckConfirmer.write` before it is sent;
one connection's commands reach the server in order.

A confirmer task then checks them with one PING/PONG for everything settled
within ``CONFIRM_INTERVAL`` (one PING per ack cost a syscall and a PONG each).
If the connection drops before the PONG (a server killed with acks in its
socket buffer), the unconfirmed acks are sent again once the client has
reconnected, so a crash costs few duplicate deliveries; a PONG that arrives on a
newer connection than the one the acks were written to does not count (the
confirmer tracks the connection generation). Acks are idempotent in
JetStream, a repeated nak or in-progress is harmless.

``close(nc)`` runs before the connection closes and confirms what is still
unconfirmed (waiting a bounded time for a reconnect and resending if needed), so
an ack reported as done to its caller is not dropped with the socket; what cannot
be confirmed is logged (the server redelivers those messages after their ack wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from nats.aio.client import Client as NatsClient

from ...core.lifecycle import cancel_and_wait

log = logging.getLogger("workflow_eventbus.nats")

ACK_LINGER = 0.001  # seconds an ack waits in the outbox for others to share its write
ACK_BATCH = 64  # this many waiting acks are written at once
CONFIRM_INTERVAL = 0.01  # seconds of acks confirmed by one PING
MAX_UNCONFIRMED = 100_000  # beyond this, the oldest are dropped (redelivery covers them)
CLOSE_WAIT = 1.0  # seconds close() spends confirming the last acks


class AckConfirmer:
    """Owns a writer and a confirmer task per connection; ``close()`` cancels and awaits them."""

    def __init__(
        self, client: Callable[[], NatsClient | None], up: asyncio.Event, timeout: float
    ) -> None:
        self._client = client
        self._up = up
        self._timeout = timeout
        self._outbox: list[tuple[str, bytes]] = []
        self._unconfirmed: list[tuple[str, bytes]] = []
        self._confirming: list[tuple[str, bytes]] = []  # the batch the task is checking
        self._queued = asyncio.Event()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._confirmer: asyncio.Task[None] | None = None
        # Connection generation (bumped on every reconnect) when the oldest ack of each
        # list was written: a PONG on a newer connection does not cover them.
        self._epoch = 0
        self._unconfirmed_since = 0
        self._confirming_since = 0

    def reconnected(self) -> None:
        """The client reconnected: acks written before it may be lost; recheck them."""
        self._epoch += 1
        self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="nats ack writer")
        if self._confirmer is None or self._confirmer.done():
            self._confirmer = loop.create_task(self._run(), name="nats ack confirmer")

    async def queue(self, tokens: Sequence[str], body: bytes) -> None:
        """Put acks in the outbox; written within ``ACK_LINGER`` (at once past ``ACK_BATCH``)."""
        self._outbox.extend((token, body) for token in tokens)
        if len(self._outbox) >= ACK_BATCH:
            await self.write()
        else:
            self._queued.set()

    async def write(self) -> None:
        """Put every ack in the outbox on the connection, in settle order."""
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        nc = self._client()
        try:
            if nc is None:
                raise ConnectionError("connection closed")
            for token, body in batch:
                await nc.publish(token, body)
        except Exception as exc:  # the confirmer resends once the connection is back
            log.info("nats: %d ack(s) not written (%s); resent after reconnect", len(batch), exc)
        self._sent(batch)

    def _sent(self, batch: list[tuple[str, bytes]]) -> None:
        if not self._unconfirmed:
            self._unconfirmed_since = self._epoch
        self._unconfirmed.extend(batch)
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            del self._unconfirmed[: len(self._unconfirmed) - MAX_UNCONFIRMED]
        self._wake.set()

    async def close(self, nc: NatsClient | None = None) -> None:
        """Stop the tasks; with ``nc`` (still open), write and confirm what is not confirmed."""
        tasks = [t for t in (self._writer, self._confirmer) if t is not None]
        self._writer = self._confirmer = None
        for task in tasks:
            await cancel_and_wait(task)  # the confirmer's flush can swallow one cancel
        written = self._confirming + self._unconfirmed
        stale = min(self._confirming_since, self._unconfirmed_since) != self._epoch
        unwritten, self._outbox = self._outbox, []
        self._confirming, self._unconfirmed = [], []
        count = len(written) + len(unwritten)
        if not count:
            return
        try:
            if nc is None or nc.is_closed:
                raise ConnectionError("connection closed")
            async with asyncio.timeout(min(self._timeout, CLOSE_WAIT)):
                if not nc.is_connected or stale:  # what was in a lost socket may be lost
                    await self._up.wait()
                    unwritten = written + unwritten
                for token, body in unwritten:
                    await nc.publish(token, body)
                await nc.flush(timeout=self._timeout)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning(
                "nats: %d ack(s) not confirmed before close (%s); the server delivers "
                "those messages again after their ack wait",
                count,
                exc or type(exc).__name__,
            )

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            await asyncio.sleep(ACK_LINGER)  # let other handlers finish and share the write
            self._queued.clear()
            await self.write()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(CONFIRM_INTERVAL)  # gather what else gets settled
            self._wake.clear()
            self._confirming, self._unconfirmed = self._unconfirmed, []
            self._confirming_since = self._unconfirmed_since
            while self._confirming:
                nc = self._client()
                if nc is None:
                    return
                try:
                    await nc.flush(timeout=self._timeout)  # type: ignore[arg-type]
                except Exception as exc:  # lost before the server confirmed: resend
                    count = len(self._confirming)
                    log.info("nats: %d ack(s) unconfirmed (%s); resending", count, exc)
                    await self._resend(self._confirming)
                    continue
                if self._confirming_since == self._epoch:
                    self._confirming = []
                else:  # written before a reconnect: this PONG does not cover them
                    count = len(self._confirming)
                    log.info("nats: %d ack(s) written before a reconnect; resending", count)
                    await self._resend(self._confirming)

    async def _resend(self, batch: list[tuple[str, bytes]]) -> None:
        await self._up.wait()
        nc = self._client()
        if nc is None:
            return
        self._confirming_since = self._epoch
        with contextlib.suppress(Exception):
            for token, body in batch:
                await nc.publish(token, body)
