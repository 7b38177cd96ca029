"""The NATS JetStream provider (nats-py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors as js_errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, JetStreamManager

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds
from ...core.deadletter import DEAD_LETTER_STREAM
from ...core.errors import (
    BrokerUnavailableError,
    ConflictError,
    EventbusError,
    NotFoundError,
    PayloadTooLargeError,
    redact,
)
from ...core.headers import CORRELATION_HEADER, MSG_ID_HEADER
from ..base import (
    AckAction,
    Delivery,
    Feature,
    HasDeadLetters,
    HasPending,
    OutboundMessage,
    Provider,
    PublishResult,
    batch_size,
)
from . import mapping
from .acks import AckConfirmer
from .admin import NatsAdmin
from .dead_letters import NatsDeadLetters
from .ephemeral import NatsEphemeral
from .errors import (
    CONSUMER_NOT_FOUND,
    STREAM_NOT_FOUND,
    consumer_conflict,
    consumer_missing,
    describe,
    is_fatal,
    listing,
    stream_conflict,
    stream_missing,
    translate,
)
from .options import PING_INTERVAL, RECONNECT_WAIT, auth_options
from .pull import PullInbox
from .replies import ReplyMux
from .status import NatsStatus
from .wire import ack_body, check_token, delivery, header_size

REQUEST_TIMEOUT = 5.0  # JetStream API and publish acknowledgement
MIN_FETCH_WAIT = 0.05  # a fetch always asks the server at least once
MAX_ASYNC_PENDING = 4000  # publish_many: unacknowledged publishes in flight


@dataclass(slots=True)
class _Pull:
    """One reusable pull subscription bound to a durable consumer."""

    inbox: PullInbox
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class NatsProvider(Provider, HasPending, HasDeadLetters, NatsStatus, NatsEphemeral, NatsAdmin):
    name = "nats"
    features = frozenset(
        {
            Feature.RESTART,
            Feature.DEDUP,
            Feature.NAK_DELAY,
            Feature.PERSISTENT,
            Feature.DEAD_LETTERS,
            Feature.PENDING,
            Feature.STATUS,
            Feature.EPHEMERAL_CONSUMERS,
            Feature.ADMIN,
        }
    )

    def __init__(
        self,
        cluster: pb.ClusterConfig,
        url: str,
        *,
        broker_name: str,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(cluster, url, broker_name=broker_name)
        self.request_timeout = request_timeout
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._jsm: JetStreamManager | None = None
        self._up = asyncio.Event()
        self._pulls: dict[tuple[str, str], _Pull] = {}
        self._pull_guard = asyncio.Lock()
        self._stream_ack_wait: dict[str, float] = {}
        self._connect_failed: asyncio.Future[BaseException] | None = None
        self._connect_error: BaseException | None = None
        self._last_error: BaseException | None = None  # since the connection last changed
        self._acks = AckConfirmer(lambda: self._nc, self._up, request_timeout)
        self._replies: ReplyMux | None = None

    def __repr__(self) -> str:
        return f"NatsProvider({self.broker_name!r}, {redact(self.url)})"

    # -- connection --------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self, timeout: float) -> None:
        if self._nc is not None and not self._nc.is_closed:
            return
        options = auth_options(self.cluster)
        per_attempt = timeout
        if self.cluster.HasField("connect_timeout"):
            per_attempt = min(timeout, duration_seconds(self.cluster.connect_timeout) or timeout)
        options.update(
            servers=[self.url],
            connect_timeout=max(per_attempt, 0.1),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            ping_interval=PING_INTERVAL,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        nc = NatsClient()
        loop = asyncio.get_running_loop()
        self._connect_failed = loop.create_future()
        self._connect_error = None
        task = loop.create_task(nc.connect(**options))
        try:
            await self._await_connect(task, self._connect_failed, timeout)
        except BaseException:
            await _discard(nc)
            raise
        finally:
            self._connect_failed = None
        replies = ReplyMux(nc)
        try:
            await replies.open()
        except BaseException:
            await _discard(nc)
            raise
        self._nc, self._replies = nc, replies
        self._js = nc.jetstream(
            timeout=self.request_timeout, publish_async_max_pending=MAX_ASYNC_PENDING
        )
        self._jsm = nc.jsm(timeout=self.request_timeout)
        self._up.set()
        self._acks.start()
        self.report_state(True)

    async def _await_connect(
        self, task: asyncio.Task[None], failed: asyncio.Future[BaseException], timeout: float
    ) -> None:
        waiters: set[asyncio.Future[Any]] = {task, failed}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
        if task in done and task.exception() is None:
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if failed.done():
            reason = describe(failed.result())
        elif task in done and task.exception() is not None:
            reason = describe(task.exception())  # type: ignore[arg-type]
        else:
            last = self._connect_error
            reason = f"no connection within {timeout:g}s" + (f" ({describe(last)})" if last else "")
        raise BrokerUnavailableError(
            f'eventbus.broker "{self.broker_name}": cannot connect to NATS at '
            f"{redact(self.url)}: {reason}; check the server is running, the URL (dsn, "
            "EVENTBUS_<NAME>_URI or NATS_URL) and the credentials"
        )

    async def _on_error(self, exc: Exception) -> None:
        failed = self._connect_failed
        if failed is not None and not failed.done():
            self._connect_error = exc
            if is_fatal(exc):
                failed.set_result(exc)
        elif failed is None:
            self._last_error = exc
            self.log.warning("nats broker %s: %s", self.broker_name, redact(describe(exc)))

    # nats-py calls these three on its own tasks. ``self._nc`` is None while we
    # connect and once close() began, so only a connection we hold that drops or
    # recovers is reported (the owner tells about its own start and stop).
    async def _on_disconnected(self) -> None:
        self._up.clear()
        if self._nc is not None:
            last, self._last_error = self._last_error, None
            self.report_state(False, describe(last) if last else "connection lost")

    async def _on_reconnected(self) -> None:
        self._acks.reconnected()
        self._up.set()
        self._last_error = None
        if self._nc is not None:
            self.report_state(True)

    async def _on_closed(self) -> None:
        self._up.clear()
        if self._nc is not None:  # closed by the client itself: it will not reconnect
            self.report_state(False, "connection closed by the NATS client")

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        replies, self._replies = self._replies, None
        self._js = self._jsm = None
        if replies is not None:
            await replies.close()
        pulls = list(self._pulls.values())
        self._pulls.clear()
        for pull in pulls:
            await pull.inbox.close()
        # Acks already reported as done must reach the server before the socket goes.
        await self._acks.close(nc)
        self._up.clear()
        if nc is not None:
            await _discard(nc)

    def _client(self, action: str) -> tuple[NatsClient, JetStreamContext, JetStreamManager]:
        if self._nc is None or self._js is None or self._jsm is None or self._nc.is_closed:
            raise BrokerUnavailableError(
                f'nats: {action}: eventbus.broker "{self.broker_name}" is not connected; '
                "start the broker module first"
            )
        return self._nc, self._js, self._jsm

    def _fail(self, exc: BaseException, action: str) -> EventbusError:
        return translate(exc, action, connected=self.connected)

    # -- streams -----------------------------------------------------------------
    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        _, _, jsm = self._client(f'ensure stream "{cfg.name}"')
        desired = mapping.stream_config(cfg)
        self.remember_stream(cfg)
        action = f'ensure stream "{cfg.name}"'
        try:
            info = await jsm.stream_info(cfg.name)
        except js_errors.NotFoundError:
            try:
                await jsm.add_stream(desired)
            except Exception as exc:
                raise self._stream_rejected(exc, cfg.name, "create", []) from exc
            return
        except Exception as exc:
            raise self._fail(exc, action) from exc
        diffs = mapping.stream_differences(info.config, desired)
        if not diffs:
            return
        frozen = [d for d in diffs if d.setting in mapping.STREAM_IMMUTABLE]
        if frozen:
            raise stream_conflict(cfg.name, frozen, "JetStream cannot change it on a live stream")
        try:
            await jsm.update_stream(desired)
        except Exception as exc:
            raise self._stream_rejected(exc, cfg.name, "update", diffs) from exc
        self.log.info("nats: updated stream %s: %s", cfg.name, listing(diffs))

    def remember_stream(self, cfg: pb.StreamConfig) -> None:
        """Record the stream's ack_wait: consumers without their own inherit it."""
        wait = duration_seconds(cfg.ack_wait) if cfg.HasField("ack_wait") else 0.0
        if wait > 0:
            self._stream_ack_wait[cfg.name] = wait
        else:
            self._stream_ack_wait.pop(cfg.name, None)

    def _stream_rejected(
        self, exc: Exception, name: str, verb: str, diffs: list[mapping.Difference]
    ) -> EventbusError:
        if isinstance(exc, js_errors.APIError) and not isinstance(
            exc, js_errors.ServiceUnavailableError
        ):
            if diffs:
                return stream_conflict(name, diffs, describe(exc))
            return ConflictError(
                f'nats stream "{name}": the server refused to {verb} it: {describe(exc)}; '
                "fix the stream config (e.g. subjects that overlap another stream)"
            )
        return self._fail(exc, f'{verb} stream "{name}"')

    # -- consumers ---------------------------------------------------------------
    async def ensure_consumer(
        self, cfg: pb.ConsumerConfig, *, stream_ack_wait: float | None = None
    ) -> None:
        stream, name = cfg.stream_name, cfg.name
        action = f'ensure consumer "{name}" on stream "{stream}"'
        _, _, jsm = self._client(action)
        inherited = stream_ack_wait or self._stream_ack_wait.get(stream)
        desired = mapping.consumer_config(cfg, inherited)
        try:
            info = await jsm.consumer_info(stream, name)
        except js_errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise stream_missing(stream, action) from exc
            await self._add_consumer(jsm, stream, desired, action)
            return
        except Exception as exc:
            raise self._fail(exc, action) from exc
        diffs = mapping.consumer_differences(info.config, desired)
        if not diffs:
            return
        frozen = [d for d in diffs if d.setting in mapping.CONSUMER_IMMUTABLE]
        if frozen:
            raise consumer_conflict(stream, name, frozen)
        await self._add_consumer(jsm, stream, desired, action)
        self.log.info("nats: updated consumer %s/%s: %s", stream, name, listing(diffs))

    async def _add_consumer(
        self, jsm: JetStreamManager, stream: str, desired: Any, action: str
    ) -> None:
        try:
            await jsm.add_consumer(stream, desired)
        except js_errors.NotFoundError as exc:
            raise stream_missing(stream, action) from exc
        except js_errors.APIError as exc:
            if isinstance(exc, js_errors.ServiceUnavailableError):
                raise self._fail(exc, action) from exc
            raise ConflictError(
                f"nats: {action}: the server refused the consumer config: {describe(exc)}; "
                "fix the consumer settings named in that message"
            ) from exc
        except Exception as exc:
            raise self._fail(exc, action) from exc

    # -- publish -----------------------------------------------------------------
    def _prepare(self, nc: NatsClient, msg: OutboundMessage) -> dict[str, str] | None:
        """Headers for ``msg`` after checking its size against the server's limit."""
        size = len(msg.payload)
        headers: dict[str, str] | None = None
        if msg.headers or msg.correlation_id or msg.msg_id:
            headers = dict(msg.headers)
            if msg.correlation_id:
                headers[CORRELATION_HEADER] = msg.correlation_id
            if msg.msg_id:
                headers[MSG_ID_HEADER] = msg.msg_id
            size += header_size(headers)
        limit = nc.max_payload
        if size > limit:
            raise PayloadTooLargeError(
                "payload",
                f"message to {msg.subject!r} is {size} bytes (payload and headers), over "
                f"the server's max_payload of {limit} bytes",
                fix="send a smaller message (store large data elsewhere and publish a "
                "reference) or raise max_payload on the server",
            )
        return headers

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        nc, _, _ = self._client("publish")
        replies = self._replies
        assert replies is not None  # set with the connection
        headers = self._prepare(nc, msg)
        try:
            ack = await replies.publish(msg.subject, msg.payload, headers, self.request_timeout)
        except Exception as exc:
            raise self._publish_error(exc, msg.subject) from exc
        return PublishResult(ack.stream, ack.seq, datetime.now(UTC), ack.duplicate)

    def _publish_error(self, exc: BaseException, subject: str) -> EventbusError:
        if isinstance(exc, js_errors.NoStreamResponseError):
            return NotFoundError(
                f"nats: publish to {subject!r}: no stream captures this subject; declare an "
                "eventbus.stream whose subjects match it, or fix the subject"
            )
        return self._fail(exc, f"publish to {subject!r}")

    async def publish_many(
        self, msgs: Sequence[OutboundMessage]
    ) -> list[PublishResult | Exception]:
        nc, js, _ = self._client("publish")
        slots: list[asyncio.Future[Any] | Exception] = []
        for msg in msgs:
            try:
                headers = self._prepare(nc, msg)
                # wait_stall costs a task per call: only pass it when the window is full.
                full = js.publish_async_pending() >= MAX_ASYNC_PENDING
                stall = self.request_timeout if full else None
                slots.append(
                    await js.publish_async(
                        msg.subject, msg.payload, headers=headers, wait_stall=stall
                    )
                )
            except Exception as exc:
                slots.append(exc if isinstance(exc, EventbusError) else self._fail(exc, "publish"))
        pending = [s for s in slots if isinstance(s, asyncio.Future)]
        if pending:
            await asyncio.wait(pending, timeout=self.request_timeout)
        now = datetime.now(UTC)
        return [
            self._publish_outcome(slot, msg, now) for slot, msg in zip(slots, msgs, strict=True)
        ]

    def _publish_outcome(
        self, slot: asyncio.Future[Any] | Exception, msg: OutboundMessage, now: datetime
    ) -> PublishResult | Exception:
        if isinstance(slot, Exception):
            return slot
        if not slot.done():
            slot.cancel()
            return self._publish_error(TimeoutError(), msg.subject)
        exc = slot.exception()
        if exc is not None:
            return self._publish_error(exc, msg.subject)
        ack = slot.result()
        return PublishResult(ack.stream, ack.seq, now, bool(ack.duplicate))

    # -- consume -----------------------------------------------------------------
    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(max_wait, MIN_FETCH_WAIT)
        action = f'fetch from consumer "{consumer}" on stream "{stream}"'
        self._client(action)
        count = batch_size(batch)
        last: BaseException | None = None
        while True:
            if not await self._wait_up(deadline):
                raise self._fail(last or nats.errors.ConnectionReconnectingError(), action)
            try:
                return await self._fetch_once(stream, consumer, count, deadline)
            except EventbusError:
                raise
            except Exception as exc:  # broken subscription or transient JetStream error
                last = exc
                await self._drop_pull(stream, consumer)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._fail(last, action)
            await asyncio.sleep(min(0.1, remaining))  # brief pause before one more try

    async def _wait_up(self, deadline: float) -> bool:
        if self._up.is_set():
            return True
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), remaining)
        return self._up.is_set()

    async def _fetch_once(
        self, stream: str, consumer: str, count: int, deadline: float
    ) -> list[Delivery]:
        pull = await self._pull(stream, consumer)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                await pull.lock.acquire()
        except TimeoutError:
            return []  # another fetch on this consumer used the whole wait
        try:
            await self._acks.write()  # the server settles them before it serves this pull
            wait = max(deadline - loop.time(), MIN_FETCH_WAIT)
            msgs = await pull.inbox.fetch(count, wait)
        except js_errors.APIError as exc:
            if exc.code in (404, 409) and not isinstance(exc, js_errors.ServiceUnavailableError):
                await self._check_consumer(stream, consumer)
            raise
        finally:
            pull.lock.release()
        return [delivery(m, stream, consumer) for m in msgs]

    async def _pull(self, stream: str, consumer: str) -> _Pull:
        key = (stream, consumer)
        pull = self._pulls.get(key)
        if pull is not None:
            return pull
        async with self._pull_guard:
            pull = self._pulls.get(key)
            if pull is None:
                await self._check_consumer(stream, consumer)
                nc, js, _ = self._client("fetch")
                inbox = PullInbox(nc, stream, consumer, getattr(js, "_prefix", "$JS.API"))
                await inbox.open()
                pull = self._pulls[key] = _Pull(inbox)
        return pull

    async def _drop_pull(self, stream: str, consumer: str) -> None:
        pull = self._pulls.pop((stream, consumer), None)
        if pull is not None:
            await pull.inbox.close()

    async def _check_consumer(self, stream: str, consumer: str) -> None:
        action = f'fetch from consumer "{consumer}" on stream "{stream}"'
        _, _, jsm = self._client(action)
        try:
            await jsm.consumer_info(stream, consumer)
        except js_errors.NotFoundError as exc:
            await self._drop_pull(stream, consumer)
            if exc.err_code == STREAM_NOT_FOUND:
                raise stream_missing(stream, action) from exc
            if exc.err_code == CONSUMER_NOT_FOUND or exc.err_code is None:
                raise consumer_missing(stream, consumer, action) from exc
            raise self._fail(exc, action) from exc

    # -- settle ------------------------------------------------------------------
    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        self._client("ack")
        body = ack_body(action, delay)
        for token in tokens:
            check_token(token)
        if not self.connected:
            raise self._fail(nats.errors.ConnectionReconnectingError(), f"{action.name.lower()}")
        # Into the outbox (see acks.py): written within a millisecond, sharing one
        # socket write with the acks of other handlers; no PING/PONG round trip
        # here, the confirmer checks them and resends after a reconnect. A later
        # fetch, consumer info or confirm writes the outbox first, so it sees them.
        await self._acks.queue(tokens, body)

    async def confirm(self) -> None:
        """Wait until the server has every ack settled so far (one PING/PONG)."""
        nc, _, _ = self._client("ack")
        try:
            await self._acks.write()
            await nc.flush(timeout=self.request_timeout)  # type: ignore[arg-type]
        except Exception as exc:
            raise self._fail(exc, "confirm acks") from exc

    async def pending(self, stream: str, consumer: str) -> tuple[int, int]:
        action = f'consumer info "{consumer}" on stream "{stream}"'
        _, _, jsm = self._client(action)
        try:
            await self._acks.write()
            info = await jsm.consumer_info(stream, consumer)
        except js_errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise stream_missing(stream, action) from exc
            raise consumer_missing(stream, consumer, action) from exc
        except Exception as exc:
            raise self._fail(exc, action) from exc
        return info.num_pending or 0, info.num_ack_pending or 0

    async def dead_letters(self, dlq_stream: str = DEAD_LETTER_STREAM) -> NatsDeadLetters:
        """A store over ``dlq_stream`` on this provider's connection (see dead_letters.py)."""
        self._client(f'open dead letters of stream "{dlq_stream}"')
        return NatsDeadLetters(lambda action: self._client(action)[2], self._fail, dlq_stream)


# -- helpers -------------------------------------------------------------------
async def _discard(nc: NatsClient) -> None:
    with contextlib.suppress(Exception):
        await nc.close()
