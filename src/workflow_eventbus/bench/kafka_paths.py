"""kafka scenarios against raw aiokafka (the provider's client) on one private broker.

The bench starts its own one-node :class:`~..devservers.kafka.KafkaServer` (only when
a kafka group is selected) and runs three groups:

- ``kafka_publish``: windows of 1000 sends awaited together (acks=all, idempotent
  producer, the subject as key) against ``Provider.publish_many`` of 1000;
- ``kafka_consume_batch``: a group consumer's ``getmany(100)`` + ``commit()`` per
  batch against ``Provider.fetch(100)`` + ``settle(ACK)`` (its commits run in the
  background: the sample waits for them at the end, ``confirm()``);
- ``kafka_trigger``: the plugin process's subscribe trigger (16 in flight) calling
  the engine stand-in for each message, next to raw aiokafka doing the same work
  (``getmany(16)``, 16 concurrent gRPC hops to the echo server, ``commit()``). A
  trigger sample runs from its first TriggerWorkflow call to its last, so the group
  join after StartModule is not counted (it is in no NATS row either).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .._proto import eventbus_pb2 as pb
from ..core.errors import ConfigError
from ..core.names import SUBSCRIBE
from ..devservers.host import PluginHost
from ..devservers.kafka import KafkaServer
from ..engine.bus import EventBus
from ..providers.base import AckAction, OutboundMessage, Provider
from .core import PAYLOAD, Budget, Outcome, Sample, Scenario, timed
from .engine import TriggerSink, engine_stand_in
from .env import BenchEnv, plugin_environment
from .runner import Group, Settings, run_groups

PUB = ("BENCH_K_PUB", "benchk.pub")
FETCH = ("BENCH_K_FETCH", "benchk.fetch", "bench-k-fetch")
TRIGGER = ("BENCH_K_TRIG", "benchk.trig", "bench-k-trig")
RAW_PUB, RAW_FETCH, RAW_TRIGGER = "benchk.rawpub", "benchk.rawfetch", "benchk.rawtrig"
WINDOW = 1000  # publish_many's cap
BATCH = 100
IN_FLIGHT = 16
GROUPS = ("kafka_publish", "kafka_consume_batch", "kafka_trigger")


def _stream(name: str, subject: str) -> pb.StreamConfig:
    return pb.StreamConfig(name=name, subjects=[subject])


def _consumer(stream: str, durable: str) -> pb.ConsumerConfig:
    return pb.ConsumerConfig(name=durable, stream_name=stream, max_ack_pending=20000)


class KafkaPaths:
    def __init__(self, server: KafkaServer, provider: Provider, env: BenchEnv) -> None:
        self.server = server
        self.provider = provider
        self.env = env
        self.producer: AIOKafkaProducer | None = None
        self.consumers: dict[str, AIOKafkaConsumer] = {}
        self.host: PluginHost | None = None
        self.sink = TriggerSink()
        self._trigger = ""

    async def open(self) -> None:
        boot = self.server.bootstrap
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(t, 1, 1) for t in (RAW_PUB, RAW_FETCH, RAW_TRIGGER)]
            )
        finally:
            await admin.close()
        # As the provider's producer (providers/kafka/provider.py): acks=all, idempotent.
        self.producer = AIOKafkaProducer(
            bootstrap_servers=boot, acks="all", enable_idempotence=True, linger_ms=0
        )
        await self.producer.start()

    async def close(self) -> None:
        if self.host is not None:
            await self.host.shutdown()
            self.host = None
        for consumer in self.consumers.values():
            await consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    # -- publish -------------------------------------------------------------
    async def _raw_window(self, topic: str, count: int) -> None:
        assert self.producer is not None
        send = self.producer.send
        key = topic.encode()
        futures = [await send(topic, PAYLOAD, key=key) for _ in range(count)]
        await asyncio.gather(*futures)

    async def raw_publish(self, limit: int, seconds: float) -> Sample:
        async def window() -> int:
            await self._raw_window(RAW_PUB, WINDOW)
            return WINDOW

        return await timed(limit, seconds, window)

    async def lib_publish_many(self, limit: int, seconds: float) -> Sample:
        provider = self.provider
        msgs = [OutboundMessage(PUB[1], PAYLOAD)] * WINDOW

        async def window() -> int:
            for result in await provider.publish_many(msgs):
                if isinstance(result, Exception):
                    raise result
            return WINDOW

        return await timed(limit, seconds, window)

    async def fill(self, topic: str, count: int) -> None:
        for start in range(0, count, WINDOW):
            await self._raw_window(topic, min(WINDOW, count - start))

    async def lib_fill(self, subject: str, count: int) -> None:
        for start in range(0, count, WINDOW):
            msgs = [OutboundMessage(subject, PAYLOAD)] * min(WINDOW, count - start)
            for result in await self.provider.publish_many(msgs):
                if isinstance(result, Exception):
                    raise result

    # -- consume + commit ----------------------------------------------------
    async def _raw_consumer(self, topic: str) -> AIOKafkaConsumer:
        consumer = self.consumers.get(topic)
        if consumer is None:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=self.server.bootstrap,
                group_id=f"raw-{topic}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            self.consumers[topic] = consumer
        return consumer

    async def raw_consume_commit(self, limit: int, seconds: float) -> Sample:
        consumer = await self._raw_consumer(RAW_FETCH)
        await self.fill(RAW_FETCH, limit)

        async def batch() -> int:
            got = await consumer.getmany(max_records=BATCH, timeout_ms=1000)
            count = sum(len(records) for records in got.values())
            if count:
                await consumer.commit()
            return count

        return await timed(limit, seconds, batch, stop_when_empty=True)

    async def lib_consume_ack(self, limit: int, seconds: float) -> Sample:
        stream, subject, durable = FETCH
        provider = self.provider
        await self.lib_fill(subject, limit)

        async def batch() -> int:
            got = await provider.fetch(stream, durable, BATCH, 1.0)
            if got:
                await provider.settle([d.ack_token for d in got], AckAction.ACK)
            return len(got)

        sample = await timed(limit, seconds, batch, stop_when_empty=True)
        began = time.perf_counter()
        await provider.confirm()  # the commits, as the raw row awaits each
        return Sample(sample.count, sample.elapsed + time.perf_counter() - began, sample.latencies)

    # -- trigger ---------------------------------------------------------------
    async def raw_trigger(self, limit: int, seconds: float) -> Sample:
        consumer = await self._raw_consumer(RAW_TRIGGER)
        await self.fill(RAW_TRIGGER, limit)
        echo = self.env.echo.message
        finished: list[float] = []

        async def hop(record: Any) -> None:
            await echo(pb.Message(subject=RAW_TRIGGER, payload=record.value))
            finished.append(time.perf_counter())

        budget = Budget(limit, seconds)
        done = 0
        while budget.more(done):
            got = await consumer.getmany(max_records=IN_FLIGHT, timeout_ms=1000)
            records = [r for batch in got.values() for r in batch]
            if not records:
                break
            await asyncio.gather(*(hop(r) for r in records))
            await consumer.commit()
            done += len(records)
        return _between(finished)

    async def _plugin(self) -> tuple[PluginHost, str]:
        if self.host is not None:
            return self.host, self._trigger
        stream, subject, durable = TRIGGER
        host = PluginHost(env=plugin_environment(self.env.plugin_loop))
        host.callback_server = engine_stand_in(self.sink)
        await host.start()
        self.host = host
        cluster = pb.ClusterConfig(
            provider="kafka", deploy_target="self_hosted", dsn=self.server.url
        )
        handles = [
            await host.create_module("eventbus.broker", "bus", typed=cluster),
            await host.create_module("eventbus.stream", stream, typed=_stream(stream, subject)),
            await host.create_module(
                "eventbus.consumer", durable, typed=_consumer(stream, durable)
            ),
        ]
        for handle in handles:
            await host.init_module(handle)
        for handle in handles:
            await host.start_module(handle)
        self._trigger = await host.create_trigger(
            SUBSCRIBE, "pipeline:bench-kafka", {"consumer": durable, "max_in_flight": IN_FLIGHT}
        )
        return host, self._trigger

    async def plugin_trigger(self, limit: int, seconds: float) -> Sample:
        """publish (untimed) -> the plugin's fetch -> TriggerWorkflow -> ack."""
        host, handle = await self._plugin()
        await self.lib_fill(TRIGGER[1], limit)
        sink = self.sink
        sink.arm(limit)
        await host.start_module(handle)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.done.wait(), seconds)
        arrivals = list(sink.arrivals)
        sink.arm(1 << 62)
        await host.stop_module(handle)
        return _between(arrivals)


def _between(times: Sequence[float]) -> Sample:
    """Messages after the first over the time from the first to the last; latency =
    the gap between consecutive messages."""
    if len(times) < 2:
        return Sample(0, 0.0, [])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return Sample(len(times) - 1, times[-1] - times[0], gaps)


def kafka_groups(paths: KafkaPaths) -> list[Group]:
    return [
        Group(
            "kafka_publish",
            [
                Scenario("kafka_raw.publish", paths.raw_publish, 40000, latency="batch"),
                Scenario(
                    "kafka.publish_many",
                    paths.lib_publish_many,
                    40000,
                    "kafka_raw.publish",
                    0.8,
                    latency="batch",
                ),
            ],
        ),
        Group(
            "kafka_consume_batch",
            [
                Scenario(
                    "kafka_raw.consume+commit", paths.raw_consume_commit, 20000, latency="batch"
                ),
                Scenario(
                    "kafka.consume100+ack",
                    paths.lib_consume_ack,
                    20000,
                    "kafka_raw.consume+commit",
                    0.6,
                    latency="batch",
                ),
            ],
        ),
        Group(
            "kafka_trigger",
            [
                Scenario(  # no target: what the raw client does for the same work, as context
                    "kafka_raw.consume16+grpc_echo_x16",
                    paths.raw_trigger,
                    8000,
                    latency="message",
                ),
                Scenario(
                    "kafka.plugin.trigger_mif16",
                    paths.plugin_trigger,
                    8000,
                    "kafka_raw.consume16+grpc_echo_x16",
                    latency="message",
                ),
            ],
        ),
    ]


async def kafka_run(
    settings: Settings,
    select: Callable[[list[Group], Sequence[str]], list[Group]],
    env: BenchEnv,
) -> list[Outcome]:
    """Start a private Kafka, declare the bus's streams and the raw topics, run the rows."""
    if not select([Group(name) for name in GROUPS], settings.only):
        return []
    server = KafkaServer()
    try:
        await server.start()
    except BaseException as exc:  # the JVM and temp dir go whatever went wrong
        await server.stop()
        if not isinstance(exc, ConfigError):
            raise
        print(f"# kafka rows skipped: {exc}", flush=True)  # no jars or no java
        return []
    bus = EventBus(environ={})
    paths: KafkaPaths | None = None
    try:
        cluster = pb.ClusterConfig(provider="kafka", deploy_target="self_hosted", dsn=server.url)
        modules = [bus.create_module("eventbus.broker", "kafka", cluster)]
        for stream, subject in (PUB, FETCH[:2], TRIGGER[:2]):  # (the trigger's consumer is
            modules.append(bus.create_module("eventbus.stream", stream, _stream(stream, subject)))
        modules.append(  # the plugin's)
            bus.create_module("eventbus.consumer", FETCH[2], _consumer(FETCH[0], FETCH[2]))
        )
        for module in modules:
            await module.init()
            await module.start()
        paths = KafkaPaths(server, bus.provider(), env)
        await paths.open()
        return await run_groups(select(kafka_groups(paths), settings.only), settings)
    finally:
        if paths is not None:
            await paths.close()
        await bus.close()
        await server.stop()
