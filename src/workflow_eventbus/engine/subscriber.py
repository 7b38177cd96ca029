"""The long-lived subscribe loop behind trigger.eventbus.subscribe.

Built once on the provider primitives ``fetch`` and ``settle``, so every
provider gets the same guarantees:

- a handler per message, at most ``max_in_flight`` at once (1 = stream order);
- with a backlog, the next window is fetched while the current one runs (taking
  only what is already there), so the broker round trip hides behind the
  handlers: at ``max_in_flight`` 1 this measured 760-830 -> 920-1,110 msg/s;
- success -> ack; failure -> nak after the backoff step for its delivery count;
- when ``max_deliver`` is exhausted the message is first copied to the dead
  letter subject (original subject, headers, payload, sequence, delivery count,
  last error) and only then terminated; a copy that fails for a transient
  reason (broker down) is retried while the message stays leased, a copy the
  broker refuses is nak'd instead, so a message is never both gone from the
  source and missing from the dead letters. The copy carries a deterministic
  msg id, so a repeated copy of the same message is dropped by dedup;
- every fetched message that is not settled yet (running, or waiting for a
  handler slot) gets in-progress signals at half its ack wait, so the broker
  does not redeliver it under a long handler. With a consumer ``backoff`` the
  broker's ack wait for delivery *n* is ``backoff[n-1]`` (JetStream semantics),
  and the signals follow that schedule;
- acks and terms that fail because the broker is unreachable are retried until
  the message's ack wait runs out (after that the broker redelivers anyway);
- broker outages (connection lost, server restart) are retried with capped
  backoff: the loop keeps delivering when the broker comes back;
- ``stop()`` stops fetching, lets in-flight handlers finish within the drain
  timeout, naks what cannot finish and what was fetched but never started,
  and only then returns. Nothing is acked unless its handler succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ..core.deadletter import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_ERROR,
    DLQ_MSG_ID,
    DLQ_PUBLISHED_AT,
    DLQ_SEQUENCE,
    DLQ_STREAM,
    DLQ_SUBJECT,
    MAX_ERROR_TEXT,
    dead_letter_msg_id,
)
from ..core.defaults import DEFAULT_BACKOFF, DEFAULT_DRAIN_TIMEOUT
from ..core.errors import BrokerUnavailableError, EventbusError
from ..core.headers import MSG_ID_HEADER
from ..core.lifecycle import cancel_and_wait
from ..providers.base import AckAction, Delivery, OutboundMessage, Provider, rfc3339
from .telemetry import OFF, Labels, Telemetry

log = logging.getLogger("workflow_eventbus.engine.subscriber")

Handler = Callable[[Delivery], Awaitable[None]]

MIN_SIGNAL_INTERVAL = 0.02
STOP_GRACE = 1.0  # s a stopping loop gets beyond its drain to nak what is left and end
AHEAD_WAIT = 0.05  # seconds a fetch ahead of need waits for messages


@dataclass(slots=True)
class SubscribeOptions:
    max_in_flight: int = 1
    # Messages per fetch; 0: max_in_flight while the consumer has a backlog (the last
    # fetch came back full), else the free handler slots.
    fetch_batch: int = 0
    fetch_wait: float = 1.0
    backoff: tuple[float, ...] = DEFAULT_BACKOFF
    max_deliver: int = 0  # <= 0: unlimited
    dead_letter_subject: str = ""
    ack_wait: float = 30.0
    # The consumer's backoff as the broker knows it (JetStream: the ack wait of
    # delivery n is server_backoff[n-1]); empty when the broker uses ack_wait.
    server_backoff: tuple[float, ...] = ()
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    retry_max: float = 5.0  # cap of the wait between failed fetches

    def ack_wait_for(self, delivery_count: int) -> float:
        """How long the broker waits for a settle of delivery ``delivery_count``."""
        if self.server_backoff:
            index = min(max(delivery_count, 1), len(self.server_backoff)) - 1
            return min(self.server_backoff[index], self.ack_wait)
        return self.ack_wait

    def retry_delay(self, delivery_count: int) -> float:
        """The nak delay after failed delivery ``delivery_count`` (0 = at once)."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(delivery_count, 1), len(self.backoff)) - 1]


@dataclass(slots=True)
class SubscriptionStats:
    fetched: int = 0
    acked: int = 0
    nakked: int = 0
    redelivered: int = 0
    dead_lettered: int = 0
    dead_letter_failures: int = 0
    in_progress_sent: int = 0
    settle_retries: int = 0
    fetch_errors: int = 0
    last_error: str = ""
    in_flight: int = field(default=0)


@dataclass(slots=True)
class _Held:
    """A fetched, not yet settled message and when it next needs a signal."""

    delivery: Delivery
    due: float


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
        telemetry: Telemetry = OFF,
        labels: Labels | None = None,
    ) -> None:
        self._provider = provider
        self.telemetry = telemetry
        self.labels = labels or Labels("", stream, consumer)
        self.stream = stream
        self.consumer = consumer
        self._handler = handler
        self.options = options or SubscribeOptions()
        self.name = name or f"{stream}/{consumer}"
        self.stats = SubscriptionStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._drain_timeout = self.options.drain_timeout  # set again by stop()
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(self.options.max_in_flight, 1))
        self._held: dict[str, _Held] = {}
        self._held_changed = asyncio.Event()
        self._keepalive_at = math.inf  # when the keepalive task wakes up next
        self._last_full = False  # the previous fetch brought all it asked for

    def holds(self, ack_token: str) -> bool:
        """True while this subscription holds the delivery of ``ack_token`` unsettled."""
        return ack_token in self._held

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"subscription {self.name}")

    def drain_limit(self, within: float | None = None) -> float:
        """Seconds running handlers get to finish on :meth:`stop`: ``drain_timeout``,
        or less when the caller must be done ``within`` seconds (the loop needs
        STOP_GRACE more to nak what is left and end)."""
        limit = self.options.drain_timeout
        if within is not None:
            limit = min(limit, max(within - STOP_GRACE, 0.0))
        return limit

    async def stop(self, within: float | None = None) -> None:
        """Graceful: stop fetching, drain in-flight handlers (see :meth:`drain_limit`),
        nak the rest."""
        self._drain_timeout = self.drain_limit(within)
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await _finish(task, self._drain_timeout)

    # -- the loop ---------------------------------------------------------------
    async def _run(self) -> None:
        keepalive = asyncio.create_task(self._keepalive(), name=f"keepalive {self.name}")
        ahead: asyncio.Task[list[Delivery]] | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if ahead is None:
                        batch = await self._fetch()
                    else:
                        task, ahead = ahead, None
                        batch = await task
                    failures = 0
                except EventbusError as exc:
                    ahead = None
                    failures += 1
                    await self._after_fetch_error(exc, failures)
                    continue
                # With a backlog the next window is leased while this one runs, so the
                # broker round trip overlaps the handlers; batches still start in stream
                # order and waiting messages get in-progress signals. Sequentially the
                # handler runs inside _dispatch, so the fetch starts first; otherwise
                # once this window has started, so at most one window waits unstarted.
                inline = self.options.max_in_flight <= 1
                if inline:
                    ahead = self._fetch_ahead()
                for delivery in batch:
                    if self._stopping.is_set():
                        break  # the rest is nak'd by _release_held below
                    await self._dispatch(delivery)
                if not inline:
                    ahead = self._fetch_ahead()
        finally:
            try:
                if ahead is not None:
                    # Awaited, never cancelled (see _fetch); what it brings is nak'd.
                    with contextlib.suppress(EventbusError, asyncio.CancelledError):
                        await ahead
                await self._drain()
                await self._release_held()
            finally:
                await cancel_and_wait(keepalive)  # its wait_for can swallow one cancel

    def _fetch_ahead(self) -> asyncio.Task[list[Delivery]] | None:
        if not self._last_full or self._stopping.is_set():
            return None
        return asyncio.create_task(self._fetch(ahead=True), name=f"fetch ahead {self.name}")

    async def _fetch(self, *, ahead: bool = False) -> list[Delivery]:
        if not ahead:
            await self._slots.acquire()  # wait for at least one free handler slot
            self._slots.release()
        if self._stopping.is_set():
            return []
        # Unset fetch_batch: a whole window only while the consumer has a backlog (one
        # fetch per finished handler cost ~100 us/msg at max_in_flight 16); a trickle
        # gets the free slots, so no more is leased than can run at once.
        size = self.options.fetch_batch
        if not size:
            size = max(self.options.max_in_flight, 1) if self._last_full else self._free_slots()
        # Not raced against stop(): a fetch cancelled after the broker handed out
        # messages would leave them leased until their ack wait. It returns
        # within fetch_wait; what it brings back during a stop is nak'd.
        # Ahead of need, take only what is there already: a stop then waits at most
        # AHEAD_WAIT for it, and an empty stream costs one short fetch.
        wait = min(AHEAD_WAIT, self.options.fetch_wait) if ahead else self.options.fetch_wait
        batch = await self._provider().fetch(self.stream, self.consumer, size, wait)
        self.stats.fetched += len(batch)
        for delivery in batch:
            self.telemetry.delivered(self.labels, delivery)
        self._last_full = len(batch) >= size
        now = time.monotonic()
        earliest = math.inf
        for delivery in batch:
            interval = self._signal_interval(delivery)
            due = now + interval if interval else 0.0
            self._held[delivery.ack_token] = _Held(delivery, due)
            if due:
                earliest = min(earliest, due)
        if earliest < self._keepalive_at:
            # Wake the keepalive only when it sleeps past the new deadline; once per
            # fetch it cost a task and a timer per message.
            self._held_changed.set()
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
        limit = self.options.max_deliver
        if limit > 0 and delivery.delivery_count > limit:
            # An earlier final attempt never settled (process killed, broker
            # down): do not run it again, keep the promise of the dead letters.
            error = (
                f"delivery {delivery.delivery_count} exceeds max_deliver {limit}; "
                "an earlier attempt did not settle"
            )
            await self._exhausted(delivery, error)
            return
        self.stats.in_flight += 1
        telemetry = self.telemetry
        token = telemetry.handler_started(self.labels, delivery)
        began = time.monotonic()
        try:
            await self._handler(delivery)
        except asyncio.CancelledError:
            telemetry.handler_finished(token, self.labels, time.monotonic() - began, "cancelled")
            await self._settle(delivery, AckAction.NAK)
            raise
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            telemetry.handler_finished(token, self.labels, time.monotonic() - began, error)
            await self._failed(delivery, exc)
        else:
            telemetry.handler_finished(token, self.labels, time.monotonic() - began, None)
            if await self._settle(delivery, AckAction.ACK, persist=True):
                self.stats.acked += 1
        finally:
            self.stats.in_flight -= 1

    # -- failure, retry and dead letters --------------------------------------
    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        error = str(exc) or type(exc).__name__
        self.stats.last_error = error
        limit = self.options.max_deliver
        if limit > 0 and delivery.delivery_count >= limit:
            await self._exhausted(delivery, error)
            return
        delay = self.options.retry_delay(delivery.delivery_count)
        log.info(
            "%s: handler failed for sequence %d (delivery %d), retry in %gs: %s",
            self.name,
            delivery.sequence,
            delivery.delivery_count,
            delay,
            error,
        )
        if await self._settle(delivery, AckAction.NAK, delay or None):
            self.stats.nakked += 1

    async def _exhausted(self, delivery: Delivery, error: str) -> None:
        if await self._dead_letter(delivery, error):
            return
        delay = self.options.retry_delay(delivery.delivery_count)
        if await self._settle(delivery, AckAction.NAK, delay or None):
            self.stats.nakked += 1

    def dead_letter_message(self, delivery: Delivery, error: str) -> OutboundMessage:
        headers = dict(delivery.headers)
        original_id = headers.pop(MSG_ID_HEADER, "")
        headers.update(
            {
                DLQ_SUBJECT: delivery.subject,
                DLQ_STREAM: delivery.stream,
                DLQ_CONSUMER: delivery.consumer,
                DLQ_SEQUENCE: str(delivery.sequence),
                DLQ_DELIVERIES: str(delivery.delivery_count),
                DLQ_ERROR: error[:MAX_ERROR_TEXT],
                DLQ_PUBLISHED_AT: rfc3339(delivery.published_at),
            }
        )
        if original_id:
            headers[DLQ_MSG_ID] = original_id
        return OutboundMessage(
            self.options.dead_letter_subject,
            delivery.payload,
            headers,
            msg_id=dead_letter_msg_id(delivery.stream, delivery.consumer, delivery.sequence),
        )

    async def _dead_letter(self, delivery: Delivery, error: str) -> bool:
        """Copy to the dead letters, then terminate. False: the copy is not stored."""
        subject = self.options.dead_letter_subject
        if not subject:
            log.error(
                "%s: sequence %d exhausted max_deliver but no dead_letter_subject is set",
                self.name,
                delivery.sequence,
            )
            return False
        outbound = self.dead_letter_message(delivery, error)
        attempt = 0
        while True:
            try:
                await self._provider().publish(outbound)
                break
            except BrokerUnavailableError as exc:
                # Transient: keep the message leased (the keepalive signals it)
                # and try again, unless we are stopping.
                attempt += 1
                self.stats.dead_letter_failures += 1
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("%s: dead-letter copy to %s waits: %s", self.name, subject, exc)
                if not await self._pause(min(0.1 * 2 ** min(attempt, 6), 5.0)):
                    return False
            except EventbusError as exc:
                self.stats.dead_letter_failures += 1
                log.error(
                    "%s: dead-letter copy to %s refused, message %d kept on %s: %s",
                    self.name,
                    subject,
                    delivery.sequence,
                    self.stream,
                    exc,
                )
                return False
        if await self._settle(delivery, AckAction.TERM, persist=True):
            self.stats.dead_lettered += 1
            self.telemetry.dead_lettered(self.labels)
            log.warning(
                "%s: sequence %d dead-lettered to %s after %d deliveries",
                self.name,
                delivery.sequence,
                subject,
                delivery.delivery_count,
                extra={
                    "event": "message.dead_lettered",
                    "subscription": self.name,
                    "broker": self.labels.broker,
                    "stream": self.stream,
                    "consumer": self.consumer,
                    "subject": delivery.subject,
                    "sequence": delivery.sequence,
                    "delivery_count": delivery.delivery_count,
                    "dead_letter_subject": subject,
                    "error": error[:MAX_ERROR_TEXT],
                },
            )
        return True

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless stopping; False when the subscription is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    # -- settling ----------------------------------------------------------------
    async def _settle(
        self,
        delivery: Delivery,
        action: AckAction,
        delay: float | None = None,
        *,
        persist: bool = False,
    ) -> bool:
        """Settle one delivery; ``persist`` retries while the broker is unreachable.

        A persisted settle gives up when the message's ack wait has run out:
        the broker has redelivered it by then (at-least-once holds)."""
        self._held.pop(delivery.ack_token, None)
        deadline = time.monotonic() + self.options.ack_wait_for(delivery.delivery_count)
        attempt = 0
        while True:
            try:
                await self._provider().settle([delivery.ack_token], action, delay)
                self.telemetry.settled(self.labels, action)
                return True
            except BrokerUnavailableError as exc:
                attempt += 1
                wait = min(0.05 * 2**attempt, 1.0)
                if not persist or time.monotonic() + wait > deadline:
                    log.warning("%s: %s failed: %s", self.name, action.name.lower(), exc)
                    return False
                self.stats.settle_retries += 1
                await asyncio.sleep(wait)
            except EventbusError as exc:
                log.warning("%s: %s failed: %s", self.name, action.name.lower(), exc)
                return False

    def _signal_interval(self, delivery: Delivery) -> float:
        wait = self.options.ack_wait_for(delivery.delivery_count)
        return max(wait / 2, MIN_SIGNAL_INTERVAL) if wait > 0 else 0.0

    async def _keepalive(self) -> None:
        """In-progress signals for every held message at half its ack wait."""
        while True:
            now = time.monotonic()
            due = [h for h in self._held.values() if h.due and h.due <= now]
            if due:
                await self._signal(due, now)
                continue
            upcoming = [h.due for h in self._held.values() if h.due]
            timeout: float | None
            if upcoming:
                self._keepalive_at = min(upcoming)
                timeout = max(self._keepalive_at - now, 0.0)
            elif self._held_changed.is_set():
                # A fetch woke us but its messages are already settled (a busy
                # consumer): anything fetched from now on is due MIN_SIGNAL_INTERVAL
                # later at the earliest, so a short sleep needs no wake-up per fetch.
                self._keepalive_at = now + MIN_SIGNAL_INTERVAL
                timeout = MIN_SIGNAL_INTERVAL
            else:  # idle: sleep until a fetch brings something
                self._keepalive_at = math.inf
                timeout = None
            self._held_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._held_changed.wait(), timeout)

    async def _signal(self, due: Sequence[_Held], now: float) -> None:
        tokens = []
        for held in due:
            interval = self._signal_interval(held.delivery)
            held.due = now + interval if interval else 0.0
            tokens.append(held.delivery.ack_token)
        try:
            await self._provider().settle(tokens, AckAction.IN_PROGRESS)
            self.stats.in_progress_sent += len(tokens)
            self.telemetry.settled(self.labels, AckAction.IN_PROGRESS, len(tokens))
        except EventbusError as exc:
            log.warning("%s: in-progress signal failed: %s", self.name, exc)

    # -- stopping ------------------------------------------------------------------
    async def _drain(self) -> None:
        if not self._handlers:
            return
        pending = set(self._handlers)
        _done, late = await asyncio.wait(pending, timeout=self._drain_timeout)
        for task in late:
            task.cancel()  # _handle naks a cancelled delivery
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    async def _release_held(self) -> None:
        """Nak what was fetched but never finished, so it is redelivered at once."""
        held, self._held = list(self._held.values()), {}
        for item in held:
            with contextlib.suppress(EventbusError):
                await self._provider().settle([item.delivery.ack_token], AckAction.NAK)
                self.stats.nakked += 1
                self.telemetry.settled(self.labels, AckAction.NAK)


async def _finish(task: asyncio.Task[None], grace: float) -> None:
    """Wait for the loop to drain; cancel it if it overstays the grace period."""
    try:
        await asyncio.wait_for(asyncio.shield(task), grace + STOP_GRACE)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
