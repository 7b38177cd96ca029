"""kill -9 of a single file-store nats-server, and of the stream leader of an R3 cluster.

Publishers retry failed publishes with the same msg id (the idempotent-publish
path), a subscribe trigger consumes throughout; at the end every publish the
broker acknowledged must have been processed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from cluster import NatsCluster
from reliability_helpers import Tally, consumer_into, make_bus, publish_all, unique, until

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import EventbusError
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.trigger import SubscribeTrigger

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

N = 3000


async def test_kill_9_single_server_during_publish_and_consume(
    nats_server_fresh: EmbeddedNats, record: Any
) -> None:
    server = nats_server_fresh
    tally = Tally("nats kill -9 + restart (R1 file)")
    stream = unique("CHAOS")
    subject = f"{stream.lower()}.e"
    bus = await make_bus(
        "nats",
        server.url,
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        consumer={"name": "w", "ack_wait": "3s"},
    )
    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"consumer": "w", "max_in_flight": 8}, consumer_into(tally)
    )
    await trig.start()
    publisher = asyncio.create_task(
        publish_all(lambda: bus.provider("bus"), subject, tally, range(N))
    )
    try:
        await until(lambda: len(tally.broker_acked) >= N // 3, what="a third published")
        server.kill()
        await until(lambda: tally.publish_errors > 0, what="the publisher noticing the crash")
        await server.restart()
        await publisher
        await until(
            lambda: tally.processed >= tally.broker_acked, timeout=60, what="all acked processed"
        )
    finally:
        publisher.cancel()
        await trig.stop()
        await bus.close()
    record(tally)
    assert len(tally.broker_acked) == N and tally.lost == 0


async def _leader(url: str, stream: str) -> str:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None
        return str(info.cluster.leader or "")
    finally:
        await nc.close()


async def test_r3_cluster_survives_killing_the_stream_leader(record: Any) -> None:
    tally = Tally("nats R3 cluster, leader kill -9")
    stream = unique("RTHREE")
    subject = f"{stream.lower()}.e"
    async with NatsCluster(3) as cluster:
        entry = cluster.nodes["n1"].url
        bus = EventBus(environ={})
        broker = bus.create_module(
            "eventbus.broker",
            "bus",
            {"provider": "nats", "deploy_target": "self_hosted", "dsn": entry},
        )
        await broker.start()
        provider = bus.provider("bus")
        cfg = pb.StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], num_replicas=3)

        async def stream_ready() -> bool:
            try:
                await provider.ensure_stream(cfg)
            except EventbusError:
                return False  # the JetStream meta leader is not elected yet
            return True

        await until(stream_ready, timeout=60, what="R3 stream created")
        await provider.ensure_consumer(
            pb.ConsumerConfig(name="w", stream_name=stream, ack_wait={"seconds": 3})
        )
        trig = SubscribeTrigger.from_trigger_config(
            bus,
            "p",
            {"consumer": "w", "stream_name": stream, "ack_wait": "3s", "max_in_flight": 8},
            consumer_into(tally),
        )
        await trig.start()
        publisher = asyncio.create_task(publish_all(lambda: provider, subject, tally, range(N)))
        try:
            await until(lambda: len(tally.broker_acked) >= N // 3, what="a third published")
            leader = await _leader(entry, stream)
            assert leader in cluster.nodes, leader
            cluster.nodes[leader].kill()
            survivors = [n for name, n in cluster.nodes.items() if name != leader]

            async def new_leader() -> bool:
                try:
                    found = await _leader(survivors[0].url, stream)
                except Exception:
                    return False
                return found not in ("", leader)

            await until(new_leader, timeout=60, what="a new stream leader")
            await publisher
            await until(
                lambda: tally.processed >= tally.broker_acked,
                timeout=90,
                what="all acked processed",
            )
        finally:
            publisher.cancel()
            await trig.stop()
            await bus.close()
    record(tally)
    assert len(tally.broker_acked) == N and tally.lost == 0
    # Check the payloads really came through the cluster, not only the counters.
    assert tally.processed == set(range(N))
