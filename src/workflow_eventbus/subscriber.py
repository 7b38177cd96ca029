"""The long-lived subscribe loop behind trigger.eventbus.subscribe.

Built once on the provider primitives ``fetch`` and ``settle``, so every
provider gets the same guarantees:

- a handler per message, at most ``max_in_flight`` at once (1 = stream order);
- success -> ack; failure -> nak after the backoff step for its delivery count;
- when ``max_deliver`` is exhausted the message is first copied to the dead
  letter subject (original subject, headers, payload, sequence, delivery count,
  last error) and only then terminated; if the copy fails it is nak'd instead,
  so a message is never both gone from the source and missing from the DLQ;
- while a handler runs longer than half the ack wait, in-progress signals keep
  the broker from redelivering it;
- broker outages (connection lost, server restart) are retried with capped
  backoff: the loop keeps delivering when the broker comes back;
- ``stop()`` stops fetching, lets in-flight handlers finish within the drain
  timeout, naks what cannot finish, and only then returns. Nothing is acked
  unless its handler succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import EventbusError
from .providers.base import AckAction, Delivery, OutboundMessage, Provider

log = logging.getLogger("workflow_eventbus.subscriber")

Handler = Callable[[Delivery], Awaitable[None]]

DEFAULT_BACKOFF = (1.0, 5.0, 30.0)
DEFAULT_DRAIN_TIMEOUT = 30.0

# Headers carried by a dead-lettered copy.
DLQ_SUBJECT = "Eventbus-Dlq-Subject"
DLQ_STREAM = "Eventbus-Dlq-Stream"
DLQ_CONSUMER = "Eventbus-Dlq-Consumer"
DLQ_SEQUENCE = "Eventbus-Dlq-Sequence"
DLQ_DELIVERIES = "Eventbus-Dlq-Delivery-Count"
DLQ_ERROR = "Eventbus-Dlq-Error"


@dataclass(slots=True)
class SubscribeOptions:
    max_in_flight: int = 1
    fetch_batch: int = 0  # 0: as many as there are free handler slots
    fetch_wait: float = 1.0
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    max_deliver: int = 0  # <= 0: unlimited
    dead_letter_subject: str = ""
    ack_wait: float = 30.0
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    retry_max: float = 5.0  # cap of the wait between failed fetches


@dataclass(slots=True)
class SubscriptionStats:
    fetched: int = 0
    acked: int = 0
    nakked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    fetch_errors: int = 0
    last_error: str = ""
    in_flight: int = field(default=0)


class Subscription:
    """Runs ``handler`` for every message of a durable consumer until stopped."""

    def __init__(
        self,
        provider: Callable[[], Provider],
        stream: str,
        consumer: str,
        handler: Handler,
        options: SubscribeOptions | None = None,
        *,
        name: str = "",
    ) -> None:
        self._provider = provider
        self.stream = stream
        self.consumer = consumer
        self._handler = handler
        self.options = options or SubscribeOptions()
        self.name = name or f"{stream}/{consumer}"
        self.stats = SubscriptionStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(self.options.max_in_flight, 1))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"subscription {self.name}")

    async def stop(self) -> None:
        """Graceful: stop fetching, drain in-flight handlers, nak the rest."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await _finish(task, self.options.drain_timeout)

    async def _run(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    batch = await self._fetch()
                    failures = 0
                except EventbusError as exc:
                    failures += 1
                    await self._after_fetch_error(exc, failures)
                    continue
                for delivery in batch:
                    await self._dispatch(delivery)
        finally:
            await self._drain()

    async def _fetch(self) -> list[Delivery]:
        await self._slots.acquire()  # wait for at least one free handler slot
        self._slots.release()
        free = self._free_slots()
        size = self.options.fetch_batch or free
        fetch = self._provider().fetch(self.stream, self.consumer, size, self.options.fetch_wait)
        stop = asyncio.ensure_future(self._stopping.wait())
        fetching = asyncio.ensure_future(fetch)
        try:
            await asyncio.wait({fetching, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not fetching.done():
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError, EventbusError):
                await fetching
            return []
        batch = fetching.result()
        self.stats.fetched += len(batch)
        if self._stopping.is_set() and batch:
            await self._settle([d.ack_token for d in batch], AckAction.NAK)
            return []
        return batch

    def _free_slots(self) -> int:
        return max(max(self.options.max_in_flight, 1) - len(self._handlers), 1)

    async def _after_fetch_error(self, exc: EventbusError, failures: int) -> None:
        self.stats.fetch_errors += 1
        self.stats.last_error = str(exc)
        delay = min(0.05 * 2 ** min(failures, 10), self.options.retry_max)
        if failures == 1 or failures % 20 == 0:
            log.warning(
                "%s: fetch failed (attempt %d), retrying in %.2fs: %s",
                self.name,
                failures,
                delay,
                exc,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _dispatch(self, delivery: Delivery) -> None:
        if delivery.delivery_count > 1:
            self.stats.redelivered += 1
        if self.options.max_in_flight <= 1:
            await self._handle(delivery)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._handle_released(delivery))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle_released(self, delivery: Delivery) -> None:
        try:
            await self._handle(delivery)
        finally:
            self._slots.release()

    async def _handle(self, delivery: Delivery) -> None:
        self.stats.in_flight += 1
        beat = asyncio.create_task(self._heartbeat(delivery))
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            await self._settle([delivery.ack_token], AckAction.NAK)
            raise
        except Exception as exc:
            await self._failed(delivery, exc)
        else:
            if await self._settle([delivery.ack_token], AckAction.ACK):
                self.stats.acked += 1
        finally:
            self.stats.in_flight -= 1
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeat(self, delivery: Delivery) -> None:
        interval = self.options.ack_wait / 2
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self._settle([delivery.ack_token], AckAction.IN_PROGRESS)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        self.stats.last_error = error
        limit = self.options.max_deliver
        exhausted = limit > 0 and delivery.delivery_count >= limit
        if exhausted and await self._dead_letter(delivery, error):
            return
        backoff = self.options.backoff
        delay = backoff[min(delivery.delivery_count, len(backoff)) - 1] if backoff else 0.0
        log.info(
            "%s: handler failed for sequence %d (delivery %d), retry in %gs: %s",
            self.name,
            delivery.sequence,
            delivery.delivery_count,
            delay,
            error,
        )
        if await self._settle([delivery.ack_token], AckAction.NAK, delay or None):
            self.stats.nakked += 1

    async def _dead_letter(self, delivery: Delivery, error: str) -> bool:
        subject = self.options.dead_letter_subject
        headers = dict(delivery.headers)
        headers.update(
            {
                DLQ_SUBJECT: delivery.subject,
                DLQ_STREAM: delivery.stream,
                DLQ_CONSUMER: delivery.consumer,
                DLQ_SEQUENCE: str(delivery.sequence),
                DLQ_DELIVERIES: str(delivery.delivery_count),
                DLQ_ERROR: error[:1024],
            }
        )
        try:
            await self._provider().publish(OutboundMessage(subject, delivery.payload, headers))
        except EventbusError as exc:
            log.error(
                "%s: dead-letter publish to %s failed, message kept: %s", self.name, subject, exc
            )
            return False
        if await self._settle([delivery.ack_token], AckAction.TERM):
            self.stats.dead_lettered += 1
            log.warning(
                "%s: sequence %d dead-lettered to %s after %d deliveries",
                self.name,
                delivery.sequence,
                subject,
                delivery.delivery_count,
            )
        return True

    async def _settle(
        self, tokens: list[str], action: AckAction, delay: float | None = None
    ) -> bool:
        try:
            await self._provider().settle(tokens, action, delay)
        except EventbusError as exc:
            # The broker will redeliver after the ack wait; at-least-once holds.
            log.warning("%s: %s failed: %s", self.name, action.name.lower(), exc)
            return False
        return True

    async def _drain(self) -> None:
        if not self._handlers:
            return
        pending = set(self._handlers)
        _done, late = await asyncio.wait(pending, timeout=self.options.drain_timeout)
        for task in late:
            task.cancel()  # _handle naks a cancelled delivery
        if late:
            await asyncio.gather(*late, return_exceptions=True)


async def _finish(task: asyncio.Task[None], grace: float) -> None:
    """Wait for the loop to drain; cancel it if it overstays the grace period."""
    try:
        await asyncio.wait_for(asyncio.shield(task), grace + 1.0)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
