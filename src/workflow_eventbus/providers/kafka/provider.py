"""The kafka provider: streams as topics, durable consumers as consumer groups.

One idempotent producer (``acks=all``), one admin client and one offsets reader
per provider; one group member per durable consumer this process fetches from
(``member.py``). What is stored where, and what is exact or approximate, is in
docs/kafka.md; the naming rules are in ``topics.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds
from ...core.deadletter import DEAD_LETTER_STREAM
from ...core.defaults import (
    DEFAULT_ACK_WAIT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_ACK_PENDING,
)
from ...core.errors import (
    BrokerUnavailableError,
    ConfigError,
    EventbusError,
    NotFoundError,
    RequestError,
)
from ...core.lifecycle import cancel_and_wait
from ...core.names import BROKER
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
from . import streams as s
from .admin import KafkaAdmin
from .dead_letters import KafkaDeadLetters
from .ephemeral import KafkaEphemeral
from .member import Member, MemberConfig
from .options import client_options
from .publisher import Publisher
from .registry import TOPIC as REGISTRY_TOPIC
from .registry import Registry, StreamRecord
from .status import KafkaStatus
from .topics import parse_token

HEALTH_INTERVAL = 2.0  # s between connection checks


class KafkaProvider(Provider, HasPending, HasDeadLetters, KafkaStatus, KafkaEphemeral, KafkaAdmin):
    name = "kafka"
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

    def __init__(self, cluster: pb.ClusterConfig, url: str, *, broker_name: str) -> None:
        super().__init__(cluster, url or cluster.dsn, broker_name=broker_name)
        self._where = f'{BROKER} "{broker_name}"'
        timeout = duration_seconds(cluster.connect_timeout)
        self.op_timeout = timeout if timeout > 0 else DEFAULT_CONNECT_TIMEOUT
        self._options: dict[str, Any] = {}
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None
        self._registry: Registry | None = None
        self._publisher: Publisher | None = None
        self._members: dict[tuple[str, str], Member] = {}
        self._member_lock = asyncio.Lock()
        self._health: asyncio.Task[None] | None = None
        self._up = False

    # ---- lifecycle ----

    async def connect(self, timeout: float) -> None:
        if self._registry is not None:
            return
        if not (self.url or self.cluster.kafka.bootstrap_servers):
            raise ConfigError(
                f"{self._where}: dsn",
                "is required for kafka",
                fix="set dsn: kafka://host:9092[,host2:9092]",
            )
        self._options = client_options(self.cluster, self.url, where=self._where)
        request_ms = int(self.op_timeout * 1000)
        self._producer = AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            request_timeout_ms=request_ms,
            linger_ms=0,
            **self._options,
        )
        self._admin = AIOKafkaAdminClient(request_timeout_ms=request_ms, **self._options)
        self._reader = AIOKafkaConsumer(enable_auto_commit=False, **self._options)
        try:
            await asyncio.wait_for(self._start_clients(), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self.close()
            raise self.unavailable("connect", exc) from exc
        except BaseException:
            await self.close()
            raise
        self._up = True
        self.report_state(True)
        self._health = asyncio.create_task(self._health_loop(), name="kafka-health")

    async def _start_clients(self) -> None:
        assert self._producer and self._admin and self._reader
        await self._producer.start()
        await self._admin.start()
        await self._reader.start()
        await s.create_registry_topic(self._admin, self.cluster)
        self._registry = Registry(self._producer, self._reader)
        await self._registry.open()
        self._publisher = Publisher(
            self._producer,
            self._registry,
            self._admin,
            self._reader,
            self._options,
            timeout=self.op_timeout,
        )

    async def close(self) -> None:
        health, self._health = self._health, None
        if health is not None:
            await cancel_and_wait(health)
        if self._publisher is not None:
            await self._publisher.close()
        members, self._members = list(self._members.values()), {}
        for member in members:
            await _quietly(member.close())
        for client in (self._reader, self._admin, self._producer):
            if client is not None:
                stop = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
                await _quietly(stop)
        self._producer = self._admin = self._reader = None
        self._registry = self._publisher = None
        self._up = False

    @property
    def connected(self) -> bool:
        return self._registry is not None and self._up

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            try:
                assert self._admin is not None
                await asyncio.wait_for(
                    self._admin.describe_topics([REGISTRY_TOPIC]), HEALTH_INTERVAL * 2
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                self._up = False
                self.report_state(False, f"kafka unreachable: {exc}")
            else:
                self._up = True
                self.report_state(True)

    def unavailable(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        servers = ",".join(self._options.get("bootstrap_servers", [])) or self.url
        return BrokerUnavailableError(
            f"{self._where}: kafka {what} failed ({servers}): {type(exc).__name__} {exc}; "
            "check that the brokers run and the URL, credentials and TLS settings are right"
        )

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise BrokerUnavailableError(
                f"{self._where}: kafka provider is not connected; start the broker module first"
            )
        return self._registry

    @property
    def admin(self) -> AIOKafkaAdminClient:
        self.registry  # noqa: B018 - raises when not connected
        assert self._admin is not None
        return self._admin

    @property
    def reader(self) -> AIOKafkaConsumer:
        self.registry  # noqa: B018 - raises when not connected
        assert self._reader is not None
        return self._reader

    async def _call(self, what: str, op: Any) -> Any:
        """Await ``op`` (a coroutine), broker errors mapped to the bus's errors."""
        try:
            return await asyncio.wait_for(op, self.op_timeout)
        except EventbusError:
            raise
        except (KafkaConnectionError, KafkaTimeoutError, OSError, TimeoutError) as exc:
            raise self.unavailable(what, exc) from exc
        except KafkaError as exc:
            raise s.provider_error(self._where, what, exc) from exc

    # ---- streams and consumers ----

    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        await self._call(
            "ensure_stream", s.ensure_stream(self.admin, self.registry, self.cluster, cfg)
        )
        self._refresh_members(cfg.name)

    async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None:
        await self._call(
            "ensure_consumer",
            s.ensure_consumer(self.admin, self.registry, self.reader, self._options, cfg),
        )
        self._refresh_members(cfg.stream_name)

    def _refresh_members(self, stream: str) -> None:
        """Members of ``stream`` here follow a changed stream or consumer: new topics are
        subscribed to, new settings (ack_wait, max_deliver, ...) apply from now on."""
        record = self.registry.stream(stream)
        if record is None:
            return
        for (name, consumer), member in self._members.items():
            cfg = self.registry.consumer(name, consumer) if name == stream else None
            if cfg is not None:
                member.reconfigure(_member_config(record, cfg))

    async def _stream(self, name: str) -> StreamRecord:
        record = self.registry.stream(name)
        if record is None:
            await self._call("sync", self.registry.sync())
            record = self.registry.stream(name)
        if record is None:
            raise NotFoundError(
                f'kafka: stream "{name}" not found; declare it with an eventbus.stream module'
            )
        return record

    async def _consumer(self, stream: str, name: str) -> tuple[StreamRecord, pb.ConsumerConfig]:
        """The stream and the consumer's config, from the registry (read again on a miss)."""
        record = await self._stream(stream)
        cfg = self.registry.consumer(stream, name)
        if cfg is None:
            await self._call("sync", self.registry.sync())
            cfg = self.registry.consumer(stream, name)
        if cfg is None:
            raise NotFoundError(
                f'kafka: consumer "{name}" not found on stream "{stream}"; declare it with an '
                "eventbus.consumer module"
            )
        return record, cfg

    # ---- publish ----

    @property
    def publisher(self) -> Publisher:
        self.registry  # noqa: B018 - raises when not connected
        assert self._publisher is not None
        return self._publisher

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        return await self._call("publish", self.publisher.publish(msg))  # type: ignore[no-any-return]

    async def publish_many(
        self, msgs: Sequence[OutboundMessage]
    ) -> list[PublishResult | Exception]:
        results: list[PublishResult | Exception] = await self._call(
            "publish", self.publisher.publish_many(msgs)
        )
        return results

    # ---- consume ----

    async def _member(self, stream: str, consumer: str) -> Member:
        member = self._members.get((stream, consumer))
        if member is not None:
            return member
        async with self._member_lock:
            member = self._members.get((stream, consumer))
            if member is not None:
                return member
            record, cfg = await self._consumer(stream, consumer)
            member = Member(_member_config(record, cfg), self._options, self.admin, self.log)
            try:
                await self._call("join consumer group", member.start())
            except BaseException:
                await _quietly(member.close())
                raise
            self._members[(stream, consumer)] = member
            return member

    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        member = await self._member(stream, consumer)
        return await member.fetch(batch_size(batch), max_wait)

    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        parsed = [parse_token(t) for t in tokens]
        for token in parsed:
            member = self._members.get((token.stream, token.consumer))
            if member is None:
                if self.registry.consumer(token.stream, token.consumer) is None:
                    raise NotFoundError(
                        f'kafka: ack_token names consumer "{token.consumer}" on stream '
                        f'"{token.stream}", which this process does not read; pass a token '
                        "this broker connection delivered"
                    )
                continue  # not fetched here (or closed since): the lease ran out anyway
            if not member.settle(token, action, delay):
                self.log.debug("kafka: stale ack token %s (redelivered or revoked)", token)

    async def confirm(self) -> None:
        for member in list(self._members.values()):
            await member.confirm(self.op_timeout, self._where)

    # ---- capabilities ----

    async def pending(self, stream: str, consumer: str) -> tuple[int, int]:
        record, cfg = await self._consumer(stream, consumer)
        member = self._members.get((stream, consumer))
        counted: tuple[int, int] = await self._call(
            "pending",
            s.pending(self.admin, self._options, record, cfg, member, timeout=self.op_timeout),
        )
        return counted

    async def dead_letters(self, dlq_stream: str = DEAD_LETTER_STREAM) -> KafkaDeadLetters:
        return KafkaDeadLetters(
            self.registry,
            self.admin,
            self._options,
            dlq_stream,
            self._stream,
            call=self._call,
            timeout=self.op_timeout,
        )


def _member_config(record: StreamRecord, cfg: pb.ConsumerConfig) -> MemberConfig:
    ack_wait = (
        duration_seconds(cfg.ack_wait) or duration_seconds(record.cfg.ack_wait) or DEFAULT_ACK_WAIT
    )
    return MemberConfig(
        stream=record.cfg.name,
        consumer=cfg.name,
        topics={t.topic: t.id for t in s.topics_for_filter(record, cfg.filter_subject)},
        filter_subject=cfg.filter_subject,
        ack_wait=ack_wait,
        max_deliver=cfg.max_deliver,
        max_ack_pending=cfg.max_ack_pending or DEFAULT_MAX_ACK_PENDING,
    )


async def _quietly(op: Any) -> None:
    try:
        await op
    except (KafkaError, OSError, RequestError, BrokerUnavailableError) as exc:
        del exc
