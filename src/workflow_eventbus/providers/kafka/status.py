"""Stream and consumer status on Kafka (the ``status`` capability).

Counts come from the partitions' offsets now: a stream's messages are the
records between each partition's first and next offset (compaction is never
on for stream topics, so that is exact once retention has run), its bytes are
not reported (0: Kafka reports sizes per log directory, not per record range),
its first/last sequence are those of its first topic's partition 0 when the
stream has one partition, else the lowest and highest sequence of any
partition, and ``last_published`` is the newest record's timestamp. A
consumer's unacknowledged and redelivered counts are the leases of this
process (another process's leases count as pending), its ``last_active`` is
unknown (None).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ...core.errors import NotFoundError
from ..base import ConsumerStatus, HasStatus, StreamStatus
from .scan import scanner
from .streams import partitions_of
from .topics import encode_sequence

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from .member import Member
    from .registry import Registry, StreamRecord


class KafkaStatus(HasStatus):
    """``stream_status`` / ``consumer_status`` for :class:`~.provider.KafkaProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        _options: dict[str, Any]
        _members: dict[tuple[str, str], Member]

        @property
        def registry(self) -> Registry: ...

        @property
        def admin(self) -> AIOKafkaAdminClient: ...

        async def _call(self, what: str, op: Any) -> Any: ...

        async def pending(self, stream: str, consumer: str) -> tuple[int, int]: ...

    async def stream_status(self) -> list[StreamStatus]:
        await self._call("sync", self.registry.sync())
        records = sorted(self.registry.streams(), key=lambda r: r.cfg.name)
        statuses: list[StreamStatus] = await self._call("status", self._all(records))
        return statuses

    async def _all(self, records: list[StreamRecord]) -> list[StreamStatus]:
        async with scanner(self._options) as reader:
            return [await self._one(reader, r) for r in records]

    async def _one(self, reader: AIOKafkaConsumer, record: StreamRecord) -> StreamStatus:
        ids = {t.topic: t.id for t in record.topics}
        tps = await partitions_of(self.admin, list(ids))
        begin = await reader.beginning_offsets(tps) if tps else {}
        end = await reader.end_offsets(tps) if tps else {}
        stored = [tp for tp in tps if end[tp] > begin[tp]]
        firsts = [encode_sequence(ids[tp.topic], tp.partition, begin[tp]) for tp in stored]
        lasts = [encode_sequence(ids[tp.topic], tp.partition, end[tp] - 1) for tp in stored]
        return StreamStatus(
            name=record.cfg.name,
            subjects=tuple(record.cfg.subjects),
            retention="limits",
            messages=sum(end[tp] - begin[tp] for tp in tps),
            bytes=0,
            first_sequence=min(firsts, default=0),
            last_sequence=max(lasts, default=0),
            consumers=len(self.registry.consumers(record.cfg.name)),
            last_published=await _newest(reader, stored, end),
        )

    async def consumer_status(self, stream: str) -> list[ConsumerStatus]:
        await self._call("sync", self.registry.sync())
        if self.registry.stream(stream) is None:
            raise NotFoundError(
                f'kafka: stream "{stream}" does not exist; declare an eventbus.stream with name '
                f"{stream}, or pick one of the streams `status` lists"
            )
        found = []
        for cfg in self.registry.consumers(stream):
            pending, ack_pending = await self.pending(stream, cfg.name)
            member = self._members.get((stream, cfg.name))
            found.append(
                ConsumerStatus(
                    stream=stream,
                    name=cfg.name,
                    filter_subject=cfg.filter_subject,
                    pending=pending,
                    ack_pending=ack_pending,
                    redelivered=member.redelivered if member else 0,
                    last_active=None,
                )
            )
        return found


async def _newest(
    reader: AIOKafkaConsumer, tps: list[TopicPartition], end: dict[TopicPartition, int]
) -> datetime | None:
    """The timestamp of the newest record of ``tps`` (each has at least one)."""
    newest = 0
    for tp in tps:
        reader.assign([tp])
        reader.seek(tp, end[tp] - 1)
        batch = await reader.getmany(tp, timeout_ms=2000, max_records=1)
        newest = max([newest, *(rec.timestamp for rec in batch.get(tp, []))])
    return datetime.fromtimestamp(newest / 1000, UTC) if newest > 0 else None
