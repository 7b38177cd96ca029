"""The plugin inside the real engine (cmd/server) with ``provider: kafka``.

interop/apps/orders.yaml (the NATS app of test_engine_e2e.py) with only its broker
module switched to kafka: HTTP in -> step.eventbus.publish -> orders.created ->
trigger.eventbus.subscribe -> pipeline "derive" -> step.eventbus.publish ->
orders.derived, against a private Kafka broker. What the pipelines published is
read straight from the stream's topic with aiokafka.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from engine_harness import (
    APPS,
    EngineServer,
    free_port,
    post_accepted,
    processes_in,
    wait_for,
)
from fixtures_kafka import KafkaFactory

from workflow_eventbus.devservers.kafka import KafkaServer
from workflow_eventbus.providers.kafka.topics import group_id

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

MakeEngine = Callable[..., EngineServer]
TOPIC = "orders._all"  # the topic of the stream subject "orders.>"
PARTITION = TopicPartition(TOPIC, 0)
EVENTS = 30


def kafka_app(folder: Path) -> Path:
    """orders.yaml with the broker module on kafka (nothing else changed)."""
    spec = (APPS / "orders.yaml").read_text()
    nats_broker = (
        'provider: nats\n      deploy_target: self_hosted\n      dsn: "${EVENTBUS_NATS_URL}"'
    )
    assert nats_broker in spec
    config = folder / "orders-kafka.yaml"
    config.write_text(
        spec.replace(
            nats_broker,
            'provider: kafka\n      deploy_target: self_hosted\n      dsn: "${EVENTBUS_KAFKA_URL}"',
        )
    )
    return config


class TopicReader:
    """Every record of the topic so far, read from the beginning (no consumer group)."""

    def __init__(self, server: KafkaServer) -> None:
        self.consumer = AIOKafkaConsumer(
            TOPIC, bootstrap_servers=server.bootstrap, auto_offset_reset="earliest"
        )
        self.records: list[Any] = []

    async def by_subject(self, subject: str) -> list[Any]:
        got = await self.consumer.getmany(timeout_ms=200)
        self.records += [r for batch in got.values() for r in batch]
        return [r for r in self.records if r.key == subject.encode()]


async def committed(server: KafkaServer, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=server.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[PARTITION])
    finally:
        await admin.close()
    found = offsets.get(PARTITION)
    return found.offset if found is not None else -1


async def test_http_events_yield_one_derived_kafka_event_each(
    make_engine: MakeEngine, private_kafka: KafkaFactory, tmp_path: Path
) -> None:
    server = await private_kafka()
    port = free_port()
    engine = make_engine(
        kafka_app(tmp_path),
        {"EVENTBUS_KAFKA_URL": server.url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"},
    )
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_listening(port)

    payloads = [
        json.dumps({"order": i, "note": "café ✓" if i % 3 else "x" * 20_000}).encode()
        for i in range(EVENTS)
    ]
    limit = asyncio.Semaphore(8)  # pipelines (and ExecuteStep calls) run concurrently

    async def post(body: bytes) -> str:
        async with limit:
            reply = await asyncio.to_thread(post_accepted, f"http://127.0.0.1:{port}/orders", body)
        return reply["sequence"]

    sequences = await asyncio.gather(*(post(body) for body in payloads))
    assert len(set(sequences)) == EVENTS, sequences

    reader = TopicReader(server)
    await reader.consumer.start()
    try:

        async def all_derived() -> bool:
            return len(await reader.by_subject("orders.derived")) >= EVENTS

        await wait_for(
            all_derived,
            timeout=60,
            what="one orders.derived record per posted order",
            check=engine.check_running,
        )
        created = await reader.by_subject("orders.created")
        derived = await reader.by_subject("orders.derived")
        end = (await reader.consumer.end_offsets([PARTITION]))[PARTITION]

        async def settled() -> bool:  # every record finished: the group committed the end
            return await committed(server, group_id("ORDERS", "order-deriver")) >= end

        await wait_for(
            settled,
            timeout=30,
            what="the deriver's group to commit every record",
            check=engine.check_running,
        )
    finally:
        await reader.consumer.stop()

    # The ingest pipeline published each body once, byte for byte, at the sequence
    # it answered (topic 0, partition 0: offset + 1).
    by_sequence = {str(r.offset + 1): r for r in created}
    assert sorted(by_sequence) == sorted(sequences)
    for seq, body in zip(sequences, payloads, strict=True):
        assert by_sequence[seq].value == body
        assert dict(by_sequence[seq].headers)["source"] == b"http-ingest"

    # The derive pipeline published exactly one event per input, same bytes.
    headers = [dict(r.headers) for r in derived]
    assert Counter(h["source-sequence"].decode() for h in headers) == Counter(sequences)
    for record, h in zip(derived, headers, strict=True):
        assert h["source-subject"] == b"orders.created"
        assert record.value == by_sequence[h["source-sequence"].decode()].value

    log = engine.log()
    assert log.count("Workflow 'pipeline:derive' executed successfully") == EVENTS
    assert log.count("Workflow 'pipeline:ingest' executed successfully") == EVENTS
    assert await engine.stop() == 0
    assert processes_in(engine.plugin_dir) == []
