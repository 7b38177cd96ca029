"""Measure the two Python Kafka clients the Kafka provider could use (issue 18).

Against one fresh one-node KafkaServer (devservers/kafka.py), in one run:

- publish: N messages of S bytes, acks=all + idempotence, in windows of 1000 sends
  whose results are all awaited before the next window (as publish_many does);
- consume+commit: read them back in a consumer group, committing after each batch
  of up to 100 (timed from the first batch to the last commit; the group join is
  printed apart).

Each client with its asyncio API: aiokafka's AIOKafkaProducer/AIOKafkaConsumer and
confluent-kafka's ``confluent_kafka.aio`` AIOProducer/AIOConsumer. AIOProducer
refuses message headers (NotImplementedError in batch mode), so a third publish
row runs confluent-kafka's plain Producer with headers, its delivery callbacks
served by a poll thread and handed to the loop. Rounds alternate the clients;
the median of the rounds is printed.

    .venv/bin/python scripts/kafka_clients.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer
from confluent_kafka.aio import AIOConsumer, AIOProducer

from workflow_eventbus.devservers.kafka import KafkaServer

WINDOW = 1000  # publish_many's cap (providers/base.py MAX_BATCH)
# librdkafka settings for every confluent-kafka client (--rdkafka key=value adds more).
RDKAFKA: dict[str, Any] = {}
HEADERS = [("eventbus-id", b"0123456789abcdef"), ("content-type", b"application/json")]


async def create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


# -- publish -------------------------------------------------------------------
# Each publisher connects in start() (and sends one warm-up message to the topic:
# metadata, producer id); only the windows that follow are timed.
class AioKafkaPublisher:
    def __init__(self, bootstrap: str, headers: bool) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        self.extra = {"headers": HEADERS} if headers else {}

    async def start(self, topic: str) -> None:
        await self.producer.start()
        await self.producer.send_and_wait(topic, b"warm-up")

    async def window(self, topic: str, values: list[bytes]) -> None:
        futures = [await self.producer.send(topic, v, **self.extra) for v in values]
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        await self.producer.stop()


class ConfluentAioPublisher:
    def __init__(self, bootstrap: str, _headers: bool) -> None:
        self.conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True}
        self.producer: AIOProducer | None = None

    async def start(self, topic: str) -> None:
        self.producer = AIOProducer(self.conf | RDKAFKA)
        await (await self.producer.produce(topic, value=b"warm-up"))

    async def window(self, topic: str, values: list[bytes]) -> None:
        assert self.producer is not None
        futures = [await self.producer.produce(topic, value=v) for v in values]
        await self.producer.flush()  # hands a partial buffer to librdkafka (and waits)
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.close()


class ConfluentThreadPublisher:
    """Plain Producer (headers work): a poll thread runs the delivery callbacks, each
    resolving its message's asyncio future through call_soon_threadsafe."""

    def __init__(self, bootstrap: str, headers: bool) -> None:
        conf = {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True}
        self.producer = Producer(conf | RDKAFKA)
        self.headers = HEADERS if headers else None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stopping.is_set():
            self.producer.poll(0.05)

    async def start(self, topic: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()
        await self.window(topic, [b"warm-up"])

    @staticmethod
    def _settle(future: asyncio.Future[None], err: Any) -> None:
        if future.done():
            return
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(str(err)))

    async def window(self, topic: str, values: list[bytes]) -> None:
        futures: list[asyncio.Future[None]] = []
        call_soon = self.loop.call_soon_threadsafe
        for v in values:
            fut: asyncio.Future[None] = self.loop.create_future()
            futures.append(fut)
            self.producer.produce(
                topic,
                value=v,
                headers=self.headers,
                on_delivery=lambda err, _m, f=fut: call_soon(self._settle, f, err),
            )
        await asyncio.gather(*futures)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.to_thread(self.thread.join)
        self.producer.flush(10)


# -- consume + commit ----------------------------------------------------------
async def consume_aiokafka(
    bootstrap: str, topic: str, count: int, batch: int
) -> tuple[float, float, float]:
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen, first, cpu = 0, 0.0, 0.0
    try:
        while seen < count:
            got = await consumer.getmany(max_records=batch, timeout_ms=1000)
            n = sum(len(records) for records in got.values())
            if n:
                if not first:
                    first, cpu = time.perf_counter(), time.process_time()
                seen += n
                await consumer.commit()
    finally:
        await consumer.stop()
    return first - started, time.perf_counter() - first, time.process_time() - cpu


async def consume_confluent_aio(
    bootstrap: str, topic: str, count: int, batch: int
) -> tuple[float, float, float]:
    started = time.perf_counter()
    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **RDKAFKA,
        }
    )
    await consumer.subscribe([topic])
    seen, first, cpu = 0, 0.0, 0.0
    try:
        while seen < count:
            msgs = await consumer.consume(num_messages=batch, timeout=1.0)
            msgs = [m for m in msgs if m.error() is None]
            if msgs:
                if not first:
                    first, cpu = time.perf_counter(), time.process_time()
                seen += len(msgs)
                await consumer.commit(asynchronous=False)
    finally:
        await consumer.close()
    return first - started, time.perf_counter() - first, time.process_time() - cpu


Publisher = AioKafkaPublisher | ConfluentAioPublisher | ConfluentThreadPublisher
# -> (group join s, consume s, CPU s of this process while consuming)
Consume = Callable[[str, str, int, int], Awaitable[tuple[float, float, float]]]
CLIENTS: dict[str, tuple[Callable[[str, bool], Publisher], Consume | None, bool]] = {
    "aiokafka": (AioKafkaPublisher, consume_aiokafka, False),
    "confluent-kafka aio": (ConfluentAioPublisher, consume_confluent_aio, False),
    "aiokafka, 2 headers": (AioKafkaPublisher, None, True),
    "confluent-kafka Producer + poll thread, 2 headers": (ConfluentThreadPublisher, None, True),
}


async def publish(
    make: Callable[[str, bool], Publisher],
    boot: str,
    topic: str,
    values: list[bytes],
    headers: bool,
) -> float:
    """Seconds to publish ``values`` in windows, after connecting and warming up."""
    publisher = make(boot, headers)
    try:
        await publisher.start(topic)
        started, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(values), WINDOW):
            await publisher.window(topic, values[start : start + WINDOW])
        return time.perf_counter() - started, time.process_time() - cpu
    finally:
        await publisher.stop()


async def run(args: argparse.Namespace) -> None:
    values = [(b"%08d" % i).ljust(args.size, b"x") for i in range(args.messages)]
    publish_rates: dict[str, list[float]] = {name: [] for name in CLIENTS}
    consume_rates: dict[str, list[float]] = {name: [] for name, c in CLIENTS.items() if c[1]}
    joins: dict[str, list[float]] = {name: [] for name in consume_rates}
    cpu_us: dict[tuple[str, str], list[float]] = {}  # (client, "publish"/"consume") -> us/msg
    async with KafkaServer() as server:
        boot = server.bootstrap
        # Warm the broker (JIT) with each client once, uncounted.
        for make, _c, headers in CLIENTS.values():
            warm = f"warm-{uuid.uuid4().hex[:8]}"
            await create_topic(boot, warm)
            await publish(make, boot, warm, values[: args.messages // 4], headers)
        for round_no in range(args.rounds):
            order = list(CLIENTS) if round_no % 2 == 0 else list(reversed(CLIENTS))
            for name in order:
                make, consume, headers = CLIENTS[name]
                topic = f"m-{uuid.uuid4().hex[:8]}"
                await create_topic(boot, topic)
                took, cpu = await publish(make, boot, topic, values, headers)
                publish_rates[name].append(args.messages / took)
                cpu_us.setdefault((name, "publish"), []).append(cpu / args.messages * 1e6)
                if consume is not None:  # (the warm-up message is the one left unread)
                    join, took, cpu = await consume(boot, topic, args.messages, args.batch)
                    consume_rates[name].append(args.messages / took)
                    cpu_us.setdefault((name, "consume"), []).append(cpu / args.messages * 1e6)
                    joins[name].append(join)
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f}"

    print(f"\n{args.messages} x {args.size} B, 1-node Kafka 4.1.1, median of {args.rounds}")
    print(
        "| client | publish msg/s (acks=all, idempotent, windows of 1000) | rounds | CPU us/msg |"
    )
    print("|---|---:|---|---:|")
    for name, rates in publish_rates.items():
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"| {name} | {med(rates)} | {rounds} | {med(cpu_us[name, 'publish'])} |")
    print(
        f"\n| client | consume+commit msg/s (batch {args.batch}) | rounds | CPU us/msg | join s |"
    )
    print("|---|---:|---|---:|---:|")
    for name, rates in consume_rates.items():
        rounds = ", ".join(f"{r:,.0f}" for r in rates)
        cpu = med(cpu_us[name, "consume"])
        print(
            f"| {name} | {med(rates)} | {rounds} | {cpu} | {statistics.median(joins[name]):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="records per consume + commit")
    parser.add_argument(
        "--rdkafka",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a librdkafka setting for the confluent-kafka clients (repeatable)",
    )
    args = parser.parse_args()
    for item in args.rdkafka:
        key, _, value = item.partition("=")
        RDKAFKA[key] = value
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
