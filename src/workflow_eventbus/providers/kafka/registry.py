"""The bus's own records on the broker: streams, consumers, removed dead letters.

Kafka keeps topics and group offsets but nothing of a stream's subjects or a
consumer's settings, so they are records of one compacted topic
(``__eventbus_registry``, one partition), keyed ``stream/<name>``,
``consumer/<stream>/<name>`` and ``removed/<dlq stream>/<sequence>``, with a JSON
value (a tombstone deletes). Every provider reads the topic from the start on
connect and catches up (:meth:`Registry.sync`) before it answers "not found", so
what one process declares, another one sees.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf.json_format import MessageToDict, ParseDict

from ..._proto import eventbus_pb2 as pb
from .topics import topic_for

TOPIC = "__eventbus_registry"
STREAM_KEY = "stream/"
CONSUMER_KEY = "consumer/"
REMOVED_KEY = "removed/"


@dataclass(slots=True)
class TopicOf:
    """One subject pattern of a stream and the topic storing it."""

    pattern: str
    topic: str
    id: int  # the topic's number in the stream's sequences; never reused


@dataclass(slots=True)
class StreamRecord:
    cfg: pb.StreamConfig
    topics: list[TopicOf]
    next_id: int

    def to_json(self) -> dict[str, Any]:
        return {
            "config": MessageToDict(self.cfg, preserving_proto_field_name=True),
            "topics": [{"pattern": t.pattern, "topic": t.topic, "id": t.id} for t in self.topics],
            "next_id": self.next_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StreamRecord:
        cfg = ParseDict(data["config"], pb.StreamConfig(), ignore_unknown_fields=True)
        topics = [TopicOf(t["pattern"], t["topic"], int(t["id"])) for t in data["topics"]]
        return cls(cfg, topics, int(data["next_id"]))

    def topic_by_name(self, topic: str) -> TopicOf | None:
        return next((t for t in self.topics if t.topic == topic), None)

    def topic_by_id(self, topic_id: int) -> TopicOf | None:
        return next((t for t in self.topics if t.id == topic_id), None)


def plan_stream(cfg: pb.StreamConfig, existing: StreamRecord | None) -> StreamRecord:
    """The record of ``cfg``: patterns kept keep their topic id, new ones get new ids."""
    known = {t.pattern: t for t in existing.topics} if existing else {}
    next_id = existing.next_id if existing else 0
    topics = []
    for i, pattern in enumerate(cfg.subjects):
        found = known.get(pattern)
        if found is None:
            found = TopicOf(pattern, topic_for(pattern, setting=f"subjects[{i}]"), next_id)
            next_id += 1
        topics.append(found)
    return StreamRecord(cfg, topics, next_id)


class Registry:
    """A local copy of the registry topic, kept current by :meth:`sync`."""

    def __init__(self, producer: AIOKafkaProducer, reader: AIOKafkaConsumer) -> None:
        self._producer = producer
        self._reader = reader
        self._tp = TopicPartition(TOPIC, 0)
        self.entries: dict[str, dict[str, Any]] = {}
        self.synced_at = 0.0  # monotonic time of the last sync
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._reader.assign([self._tp])
        await self._reader.seek_to_beginning(self._tp)
        await self.sync()

    async def sync(self) -> None:
        """Read what was written to the registry until now."""
        async with self._lock:
            end = (await self._reader.end_offsets([self._tp]))[self._tp]
            while await self._reader.position(self._tp) < end:
                batches = await self._reader.getmany(self._tp, timeout_ms=1000)
                for record in batches.get(self._tp, []):
                    self._apply(record.key, record.value)
            self.synced_at = time.monotonic()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode()
        if value is None:
            self.entries.pop(name, None)
        else:
            self.entries[name] = json.loads(value)

    async def put(self, key: str, value: dict[str, Any] | None) -> None:
        data = None if value is None else json.dumps(value, sort_keys=True).encode()
        await self._producer.send_and_wait(TOPIC, data, key=key.encode(), partition=0)
        self._apply(key.encode(), data)

    # ---- typed views ----

    def stream(self, name: str) -> StreamRecord | None:
        data = self.entries.get(STREAM_KEY + name)
        return StreamRecord.from_json(data) if data else None

    def streams(self) -> list[StreamRecord]:
        return [
            StreamRecord.from_json(v) for k, v in self.entries.items() if k.startswith(STREAM_KEY)
        ]

    async def put_stream(self, record: StreamRecord) -> None:
        await self.put(STREAM_KEY + record.cfg.name, record.to_json())

    def consumer(self, stream: str, name: str) -> pb.ConsumerConfig | None:
        data = self.entries.get(f"{CONSUMER_KEY}{stream}/{name}")
        if data is None:
            return None
        return ParseDict(data["config"], pb.ConsumerConfig(), ignore_unknown_fields=True)

    def consumers(self, stream: str) -> list[pb.ConsumerConfig]:
        prefix = f"{CONSUMER_KEY}{stream}/"
        return [
            ParseDict(v["config"], pb.ConsumerConfig(), ignore_unknown_fields=True)
            for k, v in sorted(self.entries.items())
            if k.startswith(prefix)
        ]

    async def put_consumer(self, cfg: pb.ConsumerConfig) -> None:
        data = {"config": MessageToDict(cfg, preserving_proto_field_name=True)}
        await self.put(f"{CONSUMER_KEY}{cfg.stream_name}/{cfg.name}", data)

    def removed(self, dlq_stream: str, sequence: int) -> bool:
        return f"{REMOVED_KEY}{dlq_stream}/{sequence}" in self.entries

    async def put_removed(self, dlq_stream: str, sequence: int, *, removed: bool = True) -> None:
        """Mark a dead letter removed, or drop the mark (the letter itself is gone)."""
        value = {"removed": True} if removed else None
        await self.put(f"{REMOVED_KEY}{dlq_stream}/{sequence}", value)
