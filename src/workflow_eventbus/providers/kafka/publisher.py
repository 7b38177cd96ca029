"""Publishing to Kafka: route a subject to its stream's topic, dedup by msg_id, send.

The record's key is the subject (so one subject stays in one partition, in
order), its headers are the message's (plus the correlation and msg ids under
the bus's header names), its value the payload. ``acks=all`` with the
idempotent producer: a publish is answered once every in-sync replica has it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from ...core.config import duration_seconds
from ...core.defaults import DEFAULT_DUPLICATE_WINDOW, DEFAULT_KAFKA_DEDUP_IDS
from ...core.errors import (
    BrokerUnavailableError,
    EventbusError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
)
from ...core.headers import CORRELATION_HEADER, MSG_ID_HEADER
from ...core.lifecycle import cancel_and_wait
from ...core.subjects import subject_matches, validate_subject
from ..base import OutboundMessage, PublishResult
from .dedup import DedupStore
from .registry import Registry, StreamRecord, TopicOf
from .scan import read_range, scanner
from .streams import partitions_of
from .topics import encode_sequence

ROUTES_TTL = 5.0  # s a subject -> stream answer is kept before the registry is read again


class Publisher:
    def __init__(
        self,
        producer: AIOKafkaProducer,
        registry: Registry,
        admin: AIOKafkaAdminClient,
        reader: AIOKafkaConsumer,
        options: dict[str, Any],
        *,
        timeout: float,
    ) -> None:
        self._producer = producer
        self._timeout = timeout  # connect_timeout: a scan making no progress this long fails
        self._options = options
        self._registry = registry
        self._admin = admin
        self._reader = reader
        self._routes: dict[str, tuple[StreamRecord, TopicOf]] = {}
        self._routes_at = 0.0
        self._dedup: dict[str, DedupStore] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}

    async def route(self, subject: str, setting: str = "subject") -> tuple[StreamRecord, TopicOf]:
        if time.monotonic() - self._routes_at > ROUTES_TTL:
            self._routes, self._routes_at = {}, time.monotonic()
        found = self._routes.get(subject)
        if found is not None:
            return found
        validate_subject(subject, setting=setting, wildcards=False)
        found = self._match(subject)
        if found is None:
            await self._registry.sync()
            found = self._match(subject)
        if found is None:
            raise NotFoundError(
                f'kafka: no stream captures subject "{subject}"; add it (or a wildcard such as '
                '"orders.>") to the subjects of an eventbus.stream'
            )
        self._routes[subject] = found
        return found

    def forget(self, stream: str) -> None:
        """The stream was deleted: drop its routes and remembered msg ids."""
        self._routes = {k: v for k, v in self._routes.items() if v[0].cfg.name != stream}
        self._dedup.pop(stream, None)

    def _match(self, subject: str) -> tuple[StreamRecord, TopicOf] | None:
        for record in self._registry.streams():
            for topic in record.topics:
                if subject_matches(topic.pattern, subject):
                    return record, topic
        return None

    @staticmethod
    def _check(msg: OutboundMessage, record: StreamRecord) -> None:
        limit = record.cfg.max_msg_size
        if 0 < limit < len(msg.payload):
            raise PayloadTooLargeError(
                "payload",
                f'larger than max_msg_size {limit} of stream "{record.cfg.name}"',
                value=f"{len(msg.payload)} bytes",
                fix="send a smaller payload or raise the stream's max_msg_size",
            )

    @staticmethod
    def _headers(msg: OutboundMessage) -> list[tuple[str, bytes]]:
        headers = {k: v for k, v in msg.headers.items()}
        if msg.correlation_id:
            headers[CORRELATION_HEADER] = msg.correlation_id
        if msg.msg_id:
            headers[MSG_ID_HEADER] = msg.msg_id
        return [(k, v.encode()) for k, v in headers.items()]

    async def _send(self, msg: OutboundMessage, record: StreamRecord, topic: TopicOf) -> Any:
        """Hand one record to the producer; the future of its broker acknowledgement."""
        return await self._producer.send(
            topic.topic, msg.payload, key=msg.subject.encode(), headers=self._headers(msg)
        )

    @staticmethod
    def _result(record: StreamRecord, topic: TopicOf, meta: Any) -> PublishResult:
        at = (
            datetime.fromtimestamp(meta.timestamp / 1000, UTC)
            if meta.timestamp and meta.timestamp > 0
            else datetime.now(UTC)
        )
        sequence = encode_sequence(topic.id, meta.partition, meta.offset)
        return PublishResult(record.cfg.name, sequence, at)

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        record, topic = await self.route(msg.subject)
        self._check(msg, record)
        if msg.msg_id:
            return await self._publish_once(msg, record, topic)
        meta = await (await self._send(msg, record, topic))
        return self._result(record, topic, meta)

    async def _publish_once(
        self, msg: OutboundMessage, record: StreamRecord, topic: TopicOf
    ) -> PublishResult:
        store = await self._store(record)
        seen = store.seen(msg.msg_id)
        if seen is not None:
            sequence = seen.sequence if seen.done is None else await asyncio.shield(seen.done)
            return PublishResult(record.cfg.name, sequence, datetime.now(UTC), duplicate=True)
        store.begin(msg.msg_id)
        try:
            meta = await (await self._send(msg, record, topic))
        except BaseException as exc:
            store.abort(msg.msg_id, exc)
            raise
        result = self._result(record, topic, meta)
        store.end(msg.msg_id, result.sequence)
        return result

    async def publish_many(
        self, msgs: Sequence[OutboundMessage]
    ) -> list[PublishResult | Exception]:
        """Pipelined, in list order: every record is handed over before any ack is awaited,
        except that one with a msg_id is published (dedup) before the next is handed over."""
        results: list[PublishResult | Exception | None] = [None] * len(msgs)
        waiting: list[tuple[int, StreamRecord, TopicOf, Any]] = []
        for i, msg in enumerate(msgs):
            try:
                if msg.msg_id:
                    results[i] = await self.publish(msg)
                    continue
                record, topic = await self.route(msg.subject, f"messages[{i}].subject")
                self._check(msg, record)
                waiting.append((i, record, topic, await self._send(msg, record, topic)))
            except EventbusError as exc:
                results[i] = exc
            except KafkaError as exc:  # reported per message: the others were handed over
                results[i] = _mapped(i, exc)
        for i, record, topic, future in waiting:
            try:
                results[i] = self._result(record, topic, await future)
            except KafkaError as exc:
                results[i] = _mapped(i, exc)
            except Exception as exc:  # reported per message
                results[i] = exc
        return [r if r is not None else ProviderError("not published") for r in results]

    # ---- the dedup store of a stream ----

    async def _store(self, record: StreamRecord) -> DedupStore:
        name = record.cfg.name
        store = self._dedup.get(name)
        if store is None:
            window = duration_seconds(record.cfg.duplicate_window) or DEFAULT_DUPLICATE_WINDOW
            store = self._dedup[name] = DedupStore(window, DEFAULT_KAFKA_DEDUP_IDS)
            self._loading[name] = asyncio.create_task(self._load(record, store))
        loading = self._loading.get(name)
        if loading is not None:
            try:
                await asyncio.shield(loading)
            except BaseException:
                if loading.done() and self._dedup.get(name) is store:
                    del self._dedup[name]  # not loaded: the next publish loads it again
                raise
            finally:
                if loading.done() and self._loading.get(name) is loading:
                    del self._loading[name]
        return store

    async def close(self) -> None:
        """Stop the dedup loads still running (the provider closes)."""
        loading, self._loading = list(self._loading.values()), {}
        for task in loading:
            await cancel_and_wait(task)
        self._dedup.clear()

    async def _load(self, record: StreamRecord, store: DedupStore) -> None:
        """Fill ``store`` with the msg ids of the records of the last window."""
        since = int((time.time() - store.window) * 1000)
        for topic in record.topics:
            tps = await partitions_of(self._admin, [topic.topic])
            if not tps:
                continue
            starts = await self._reader.offsets_for_times(dict.fromkeys(tps, since))
            ends = await self._reader.end_offsets(tps)
            for tp in tps:
                start = starts.get(tp)
                if start is not None and start.offset < ends[tp]:
                    await self._scan(store, topic, tp, start.offset, ends[tp])

    async def _scan(
        self, store: DedupStore, topic: TopicOf, tp: TopicPartition, start: int, end: int
    ) -> None:
        async with scanner(self._options) as reader:
            async for rec in read_range(reader, tp, start, end, stall=self._timeout):
                msg_id = next((v for k, v in rec.headers or () if k == MSG_ID_HEADER), None)
                if msg_id is not None:
                    age = max(time.time() - rec.timestamp / 1000, 0.0)
                    sequence = encode_sequence(topic.id, tp.partition, rec.offset)
                    store.remember(msg_id.decode(), sequence, time.monotonic() - age)


def _mapped(index: int, exc: KafkaError) -> EventbusError:
    """A producer error of ``messages[index]`` as one of the bus's errors."""
    text = f"kafka: publish of messages[{index}] failed: {type(exc).__name__} {exc}"
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError):
        return BrokerUnavailableError(text + "; check that the broker is reachable")
    return ProviderError(text)
