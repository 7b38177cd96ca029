"""Dead letters on Kafka: the records of the dead-letter stream's topics.

Kafka cannot delete one record from the middle of a log, so :meth:`remove`
writes a removal record to the registry and listing skips removed letters; once
the removed letters are the oldest of their partition they are deleted for good
(DeleteRecords before the first one still listed) and so are their removal
records. The others go with the topic's retention. Letters are listed in
sequence order (topic, partition, offset), which for the dead-letter stream's
one-partition topic is the order they were written in.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from ...core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ...core.defaults import DEFAULT_DEAD_LETTER_LIMIT
from ...core.errors import NotFoundError
from ..base import DeadLetterStore
from .registry import Registry, StreamRecord
from .scan import read_range, scanner
from .streams import partitions_of
from .topics import decode_sequence, encode_sequence


class KafkaDeadLetters(DeadLetterStore):
    def __init__(
        self,
        registry: Registry,
        admin: AIOKafkaAdminClient,
        options: dict[str, Any],
        dlq_stream: str = DEAD_LETTER_STREAM,
        stream_of: Callable[[str], Awaitable[StreamRecord]] | None = None,
        *,
        call: Callable[[str, Awaitable[Any]], Awaitable[Any]],
        timeout: float,
    ) -> None:
        super().__init__(dlq_stream)
        self._registry = registry
        self._admin = admin
        self._options = options
        self._stream_of = stream_of
        # The provider's _call: broker errors mapped, each call bounded by connect_timeout.
        self._call = call
        self._timeout = timeout

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_DEAD_LETTER_LIMIT
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        await self._call("sync", self._registry.sync())
        record = self._registry.stream(self.dlq_stream)
        if record is None:
            if self._stream_of is None:
                return []
            try:
                record = await self._stream_of(self.dlq_stream)
            except NotFoundError:
                return []  # nothing was dead-lettered yet
        out: list[DeadLetter] = []
        await self._call("dead letters", self._list(record, stream, consumer, limit, out))
        return out

    async def _list(
        self,
        record: StreamRecord,
        stream: str,
        consumer: str,
        limit: int,
        out: builtins.list[DeadLetter],
    ) -> None:
        async with scanner(self._options) as reader:
            for topic in record.topics:
                for tp in await partitions_of(self._admin, [topic.topic]):
                    await self._read(
                        reader, tp, topic.id, stream=stream, consumer=consumer, limit=limit, out=out
                    )
                    if len(out) >= limit:
                        return

    async def _read(
        self,
        reader: AIOKafkaConsumer,
        tp: TopicPartition,
        topic_id: int,
        *,
        stream: str,
        consumer: str,
        limit: int,
        out: builtins.list[DeadLetter],
    ) -> None:
        end = (await reader.end_offsets([tp]))[tp]
        async for rec in read_range(reader, tp, None, end, stall=self._timeout):
            if len(out) >= limit:
                return
            sequence = encode_sequence(topic_id, tp.partition, rec.offset)
            if self._registry.removed(self.dlq_stream, sequence):
                continue
            headers = {k: v.decode(errors="replace") for k, v in rec.headers or ()}
            subject = rec.key.decode() if rec.key else ""
            letter = DeadLetter.parse(self.dlq_stream, sequence, subject, headers, rec.value or b"")
            if letter.matches(stream, consumer):
                out.append(letter)

    async def remove(self, letter: DeadLetter) -> None:
        record = self._registry.stream(letter.dlq_stream)
        topic_id, partition, offset = decode_sequence(letter.dlq_sequence)
        topic = record.topic_by_id(topic_id) if record else None
        if topic is None:
            return  # not a letter of a stream this broker has
        tp = TopicPartition(topic.topic, partition)
        await self._call("dead letter remove", self._remove(letter, topic_id, tp, offset))

    async def _remove(
        self, letter: DeadLetter, topic_id: int, tp: TopicPartition, offset: int
    ) -> None:
        async with scanner(self._options) as reader:
            start = (await reader.beginning_offsets([tp]))[tp]
        if offset < start:
            return  # deleted for good already
        if not self._registry.removed(letter.dlq_stream, letter.dlq_sequence):
            await self._registry.put_removed(letter.dlq_stream, letter.dlq_sequence)
        await self._trim(letter.dlq_stream, topic_id, tp, start)

    async def _trim(self, dlq_stream: str, topic_id: int, tp: TopicPartition, start: int) -> None:
        """Delete the removed letters at the start of a partition for good (Kafka deletes
        records only before an offset), and then their removal records."""
        offset = start
        while self._registry.removed(dlq_stream, encode_sequence(topic_id, tp.partition, offset)):
            offset += 1
        if offset == start:
            return
        await self._admin.delete_records({tp: RecordsToDelete(offset)})
        for gone in range(start, offset):
            sequence = encode_sequence(topic_id, tp.partition, gone)
            await self._registry.put_removed(dlq_stream, sequence, removed=False)

    async def close(self) -> None:
        return None  # the registry is the provider's
