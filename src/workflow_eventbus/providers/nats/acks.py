"""Ack confirmation off the hot path.

``settle`` queues its acks on the connection (like nats-py's ``msg.ack()``) and
returns; this task then confirms them with one PING/PONG for everything settled
within ``CONFIRM_INTERVAL`` (one PING per ack cost a syscall and a PONG each). If the connection drops before the PONG (a server
killed with acks in its socket buffer), the unconfirmed acks are sent again
once the client has reconnected, so a crash costs few duplicate deliveries.
Acks are idempotent in JetStream, a repeated nak or in-progress is harmless.

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

log = logging.getLogger("workflow_eventbus.nats")

CONFIRM_INTERVAL = 0.01  # seconds of acks confirmed by one PING
MAX_UNCONFIRMED = 100_000  # beyond this, the oldest are dropped (redelivery covers them)
CLOSE_WAIT = 1.0  # seconds close() spends confirming the last acks


class AckConfirmer:
    """Owns one background task per connection; ``close()`` cancels and awaits it."""

    def __init__(
        self, client: Callable[[], NatsClient | None], up: asyncio.Event, timeout: float
    ) -> None:
        self._client = client
        self._up = up
        self._timeout = timeout
        self._unconfirmed: list[tuple[str, bytes]] = []
        self._confirming: list[tuple[str, bytes]] = []  # the batch the task is checking
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="nats ack confirmer"
            )

    def sent(self, tokens: Sequence[str], body: bytes) -> None:
        self._unconfirmed.extend((token, body) for token in tokens)
        if len(self._unconfirmed) > MAX_UNCONFIRMED:
            del self._unconfirmed[: len(self._unconfirmed) - MAX_UNCONFIRMED]
        self._wake.set()

    async def close(self, nc: NatsClient | None = None) -> None:
        """Stop the task; with ``nc`` (still open), confirm the acks not yet confirmed."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = self._confirming + self._unconfirmed
        self._confirming, self._unconfirmed = [], []
        if not pending or nc is None or nc.is_closed:
            return
        try:
            async with asyncio.timeout(min(self._timeout, CLOSE_WAIT)):
                if not nc.is_connected:  # reconnecting: what was in the socket may be lost
                    await self._up.wait()
                    for token, body in pending:
                        await nc.publish(token, body)
                await nc.flush(timeout=self._timeout)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning(
                "nats: %d ack(s) not confirmed before close (%s); the server delivers "
                "those messages again after their ack wait",
                len(pending),
                exc or type(exc).__name__,
            )

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(CONFIRM_INTERVAL)  # gather what else gets settled
            self._wake.clear()
            self._confirming, self._unconfirmed = self._unconfirmed, []
            while self._confirming:
                nc = self._client()
                if nc is None:
                    return
                try:
                    await nc.flush(timeout=self._timeout)  # type: ignore[arg-type]
                    self._confirming = []
                except Exception as exc:  # lost before the server confirmed: resend
                    count = len(self._confirming)
                    log.info("nats: %d ack(s) unconfirmed (%s); resending", count, exc)
                    await self._resend(self._confirming)

    async def _resend(self, batch: list[tuple[str, bytes]]) -> None:
        await self._up.wait()
        nc = self._client()
        if nc is None:
            return
        with contextlib.suppress(Exception):
            for token, body in batch:
                await nc.publish(token, body)
