"""Kafka under faults: kill -9 of the single broker, of a consumer-group member
process, and of the partition leader of a 3-node cluster (replication 3,
min.insync.replicas 2, acks=all).

As in the NATS and PostgreSQL scenarios, publishers retry failed publishes with
the same msg id, a subscribe trigger consumes throughout, and at the end every
publish the broker acknowledged must have been processed (``lost`` 0).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from fixtures_kafka import KafkaFactory
from kafka_helpers import group_members, topic_config
from plugin_process_helpers import declare
from reliability_helpers import Tally, consumer_into, make_bus, publish_all, unique, until

from workflow_eventbus.devservers.host import PluginHost, TriggerCall
from workflow_eventbus.devservers.kafka import KafkaServer
from workflow_eventbus.engine.trigger import SubscribeTrigger
from workflow_eventbus.providers.base import OutboundMessage
from workflow_eventbus.providers.kafka.topics import group_id

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

N = 3000


async def run_with_fault(
    server: KafkaServer,
    tally: Tally,
    fault: Any,
    *,
    broker: dict[str, Any] | None = None,
) -> None:
    """Publish N (retrying) while a trigger consumes; ``fault()`` runs after a third."""
    stream = unique("KCHAOS")
    subject = f"{stream.lower()}.e"
    bus = await make_bus(
        "kafka",
        server.url,
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        consumer={"name": "w", "ack_wait": "5s"},
        broker={"deploy_target": "self_hosted", "connect_timeout": "5s", **(broker or {})},
    )
    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"consumer": "w", "max_in_flight": 8}, consumer_into(tally)
    )
    await trig.start()
    publisher = asyncio.create_task(
        publish_all(lambda: bus.provider("bus"), subject, tally, range(N), give_up_after=90)
    )
    try:
        await until(lambda: len(tally.broker_acked) >= N // 3, timeout=60, what="a third published")
        await fault(f"{stream.lower()}._all")
        await asyncio.wait_for(publisher, 120)
        await until(
            lambda: tally.processed >= tally.broker_acked, timeout=90, what="all acked processed"
        )
    finally:
        publisher.cancel()
        await trig.stop()
        await bus.close()


async def test_kill_9_broker_and_restart_during_publish_and_consume(
    private_kafka: KafkaFactory, record: Any
) -> None:
    server = await private_kafka()
    tally = Tally("kafka kill -9 + restart (1 node)")

    async def crash(_topic: str) -> None:
        await server.kill()
        await until(lambda: tally.publish_errors > 0, timeout=30, what="the publisher noticing")
        await server.restart()

    await run_with_fault(server, tally, crash)
    record(tally)
    assert len(tally.broker_acked) == N and tally.lost == 0
    assert tally.processed == set(range(N))


async def test_3_node_cluster_survives_killing_the_partition_leader(
    private_kafka: KafkaFactory, record: Any
) -> None:
    server = await private_kafka(nodes=3, min_insync=2)
    tally = Tally("kafka 3 nodes, leader kill -9")
    killed: list[int] = []

    async def kill_leader(topic: str) -> None:
        info = (await server.partitions(topic))[0]
        assert len(info.replicas) == 3 and len(info.isr) == 3, info
        assert (await topic_config(server, topic))["min.insync.replicas"] == "2"
        leader = await server.leader_of(topic)
        killed.append(leader)
        await server.kill(leader)

        async def moved() -> bool:
            info = (await server.partitions(topic)).get(0)
            return info is not None and info.leader not in (-1, leader)

        await until(moved, timeout=30, what="a new partition leader")

    await run_with_fault(
        server,
        tally,
        kill_leader,
        broker={"kafka": {"default_replication_factor": 3, "min_insync_replicas": 2}},
    )
    record(tally)
    assert len(killed) == 1
    assert len(tally.broker_acked) == N and tally.lost == 0
    assert tally.processed == set(range(N))


# ---- a group member process killed mid-batch ----

MEMBER_N = 200
ACK_WAIT = "60s"  # longer than the test: only the rebalance can bring a message back


async def test_kill_9_group_member_mid_batch_the_other_member_redelivers(
    kafka_server: KafkaServer, record: Any
) -> None:
    """Two members of one consumer group on a 2-partition stream: one in this process,
    and a plugin process whose workflow never finishes. kill -9 of the plugin: after
    the group's session timeout the rebalance hands its partition to the survivor,
    which reads it again from the committed offset, so every unacked message comes
    back (ack_wait is 60 s: the redelivery is the rebalance, not a lease running out)."""
    tally = Tally("kafka group member kill -9")
    stream = unique("KMEMBER")
    stuck: dict[int, int] = {}  # id -> delivery count the doomed member saw

    async def hang(call: TriggerCall) -> str:
        stuck[call.data["body"]["i"]] = int(call.data["delivery_count"])
        await asyncio.Event().wait()  # the workflow never finishes
        return ""

    survivor = await make_bus(
        "kafka",
        kafka_server.url,
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        consumer={"name": "w", "ack_wait": ACK_WAIT},
        broker={"deploy_target": "self_hosted"},
        stream_extra={"partitions": 2},
    )
    trig = SubscribeTrigger.from_trigger_config(
        survivor, "p", {"consumer": "w", "max_in_flight": 8}, consumer_into(tally)
    )
    doomed = PluginHost(on_trigger=hang)
    try:
        await trig.start()
        await until(
            lambda: _members_are(kafka_server, stream, 1),
            timeout=30,
            what="the survivor in the group",
        )
        await doomed.start()
        await declare(
            doomed,
            kafka_server.url,
            stream,
            {"name": "w", "ack_wait": ACK_WAIT},
            provider="kafka",
            stream_extra={"partitions": 2},
        )
        handle = await doomed.create_trigger(
            "trigger.eventbus.subscribe", "pipeline:chaos", {"consumer": "w", "max_in_flight": 4}
        )
        await doomed.start_module(handle)
        await until(
            lambda: _members_are(kafka_server, stream, 2),
            timeout=60,
            what="both members in the group",
        )
        # Subjects e0..e9 (the record key) spread over both partitions.
        provider = survivor.provider("bus")
        for i in range(MEMBER_N):
            tally.published += 1
            subject = f"{stream.lower()}.e{i % 10}"
            msg = OutboundMessage(subject, json.dumps({"i": i}).encode(), msg_id=f"{stream}-{i}")
            await provider.publish(msg)
            tally.broker_acked.add(i)
        await until(lambda: len(stuck) == 4, timeout=60, what="4 deliveries stuck in the plugin")
        for i in stuck:
            tally.note(i)
        killed_at = time.monotonic()
        await doomed.kill()
        assert doomed.process is not None and doomed.process.returncode == -9
        await until(lambda: tally.processed >= tally.broker_acked, timeout=60, what="all processed")
        back = time.monotonic() - killed_at
        print(f"\nredelivered to the other member {back:.1f}s after the kill")
    finally:
        await doomed.kill()
        await trig.stop()
        await survivor.close()
    record(tally)
    assert set(stuck.values()) == {1}
    assert stuck.keys() <= tally.processed
    assert tally.lost == 0 and tally.processed == set(range(MEMBER_N))
    assert back < 40, f"redelivered after {back:.1f}s: by the lease, not the rebalance"


async def _members_are(server: KafkaServer, stream: str, count: int) -> bool:
    return await group_members(server, group_id(stream, "w")) == ["Stable", count]
