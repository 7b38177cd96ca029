"""The ``admin`` capability on Kafka: compare a live stream or consumer with a config,
delete them (the IaC provider's read, diff and delete).

A stream's live settings are its topics' (``retention.ms``, ``retention.bytes``,
``max.message.bytes``, the partition count of its first topic) and, for what Kafka
has no setting for, its registry record (subjects, duplicate window, ack wait). A
consumer's are its registry record. Deleting a stream deletes its topics, its
consumers' groups and its records; deleting a consumer deletes its group (and so its
committed offsets) and its record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import DeleteGroupsRequest

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds, format_duration
from ...core.defaults import DEFAULT_KAFKA_PARTITIONS
from ...core.errors import ProviderError
from ...core.subjects import split_filter
from ..base import HasAdmin, SettingDrift
from .registry import CONSUMER_KEY, STREAM_KEY
from .streams import partitions_of
from .topics import group_id

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

    from .member import Member
    from .publisher import Publisher
    from .registry import Registry

GONE_WAIT = 15.0  # s a deleted topic may take to leave the metadata
GONE_POLL = 0.05
GROUP_GONE = (0, 69)  # deleted, or GROUP_ID_NOT_FOUND: there was none


def _duration(value: Any) -> str:
    return format_duration(duration_seconds(value))


def _ms_setting(value: str | None) -> str:
    """A topic's retention.ms as the stream's max_age (-1: kept for ever = 0s)."""
    number = int(value) if value and value.lstrip("-").isdigit() else -1
    return format_duration(max(number, 0) / 1000)


_CONSUMER: tuple[tuple[str, Callable[[pb.ConsumerConfig], str]], ...] = (
    ("filter_subject", lambda c: ",".join(split_filter(c.filter_subject))),
    ("ack_policy", lambda c: pb.AckPolicy.Name(c.ack_policy or pb.ACK_POLICY_EXPLICIT)),
    ("max_deliver", lambda c: str(c.max_deliver)),
    ("deliver_policy", lambda c: pb.DeliverPolicy.Name(c.deliver_policy or pb.DELIVER_POLICY_ALL)),
    ("opt_start_seq", lambda c: str(c.opt_start_seq)),
    ("opt_start_time", lambda c: c.opt_start_time),
    ("ack_wait", lambda c: _duration(c.ack_wait)),
    ("max_ack_pending", lambda c: str(c.max_ack_pending)),
    ("backoff", lambda c: ",".join(_duration(d) for d in c.backoff)),
    ("dead_letter_subject", lambda c: c.dead_letter_subject),
)
CONSUMER_IMMUTABLE = ("filter_subject", "deliver_policy", "opt_start_seq", "opt_start_time")


class KafkaAdmin(HasAdmin):
    """``stream_drift`` / ``consumer_drift`` / ``delete_*`` for the kafka provider."""

    if TYPE_CHECKING:  # what the provider class supplies
        _members: dict[tuple[str, str], Member]

        @property
        def registry(self) -> Registry: ...

        @property
        def admin(self) -> AIOKafkaAdminClient: ...

        @property
        def publisher(self) -> Publisher: ...

        async def _call(self, what: str, op: Any) -> Any: ...

    async def stream_drift(self, cfg: pb.StreamConfig) -> list[SettingDrift] | None:
        await self._call("sync", self.registry.sync())
        record = self.registry.stream(cfg.name)
        if record is None:
            return None
        first = record.topics[0].topic
        described = await self._call(
            "describe topic",
            self.admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, first, None)]),
        )
        live = {entry[0]: entry[1] for entry in described[0].resources[0][4]}
        parts = len(await self._call("describe topic", partitions_of(self.admin, [first])))
        wanted_parts = cfg.partitions or DEFAULT_KAFKA_PARTITIONS
        rows = [
            ("subjects", ",".join(sorted(record.cfg.subjects)), ",".join(sorted(cfg.subjects))),
            ("max_age", _ms_setting(live.get("retention.ms")), _duration(cfg.max_age)),
            ("max_bytes", _limit(live.get("retention.bytes")), str(max(cfg.max_bytes, -1) or -1)),
            (
                "max_msg_size",
                str(record.cfg.max_msg_size or -1),
                str(cfg.max_msg_size or -1),
            ),
            (
                "duplicate_window",
                _duration(record.cfg.duplicate_window),
                _duration(cfg.duplicate_window),
            ),
            ("ack_wait", _duration(record.cfg.ack_wait), _duration(cfg.ack_wait)),
            ("partitions", str(parts), str(wanted_parts)),
        ]
        return [
            SettingDrift(name, now, want, name == "partitions" and int(want) < int(now))
            for name, now, want in rows
            if now != want
        ]

    async def consumer_drift(self, cfg: pb.ConsumerConfig) -> list[SettingDrift] | None:
        await self._call("sync", self.registry.sync())
        if self.registry.stream(cfg.stream_name) is None:
            return None
        stored = self.registry.consumer(cfg.stream_name, cfg.name)
        if stored is None:
            return None
        return [
            SettingDrift(name, show(stored), show(cfg), name in CONSUMER_IMMUTABLE)
            for name, show in _CONSUMER
            if show(stored) != show(cfg)
        ]

    async def delete_consumer(self, stream: str, name: str) -> bool:
        await self._call("sync", self.registry.sync())
        if self.registry.consumer(stream, name) is None:
            return False
        member = self._members.pop((stream, name), None)
        if member is not None:
            await member.close()
        await self._call("delete consumer group", self._delete_group(group_id(stream, name)))
        await self._call(
            "delete consumer", self.registry.put(f"{CONSUMER_KEY}{stream}/{name}", None)
        )
        return True

    async def _delete_group(self, group: str) -> None:
        coordinator = await self.admin.find_coordinator(group)
        request = DeleteGroupsRequest([group])
        response = await self.admin._send_request(request, coordinator)
        for name, code in response.results:
            if code not in GROUP_GONE:
                raise ProviderError(
                    f'kafka: deleting consumer group "{name}" failed (error {code}); stop the '
                    "processes still reading it and try again"
                )

    async def delete_stream(self, name: str) -> bool:
        await self._call("sync", self.registry.sync())
        record = self.registry.stream(name)
        if record is None:
            return False
        for consumer in self.registry.consumers(name):
            await self.delete_consumer(name, consumer.name)
        topics = [t.topic for t in record.topics]
        await self._call("delete topics", self.admin.delete_topics(topics))
        await self._call("delete topics", self._gone(topics))
        await self._call("delete stream", self.registry.put(STREAM_KEY + name, None))
        self.publisher.forget(name)
        return True

    async def _gone(self, topics: list[str]) -> None:
        """Wait until the deleted topics left the metadata (so they can be made again)."""
        deadline = time.monotonic() + GONE_WAIT
        while time.monotonic() < deadline:
            if not await partitions_of(self.admin, topics):
                return
            await asyncio.sleep(GONE_POLL)


def _limit(value: str | None) -> str:
    return value if value and value != "-1" else "-1"
