"""NatsProvider across a nats-server crash (kill -9) and restart on the same port and store."""

from __future__ import annotations

import asyncio
import time

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import BrokerUnavailableError, EventbusError
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.providers.base import AckAction, OutboundMessage
from workflow_eventbus.providers.nats import NatsProvider


async def publish_until_acked(provider: NatsProvider, msg: OutboundMessage) -> int:
    """Retry through the outage; returns the acknowledged sequence."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return (await provider.publish(msg)).sequence
        except EventbusError:
            assert time.monotonic() < deadline, "publish never succeeded after restart"
            await asyncio.sleep(0.05)


async def test_consumer_resumes_after_kill_and_restart(nats_server_fresh: EmbeddedNats) -> None:
    server = nats_server_fresh
    provider = NatsProvider(pb.ClusterConfig(), server.url, broker_name="bus")
    await provider.connect(5)
    try:
        await provider.ensure_stream(pb.StreamConfig(name="R", subjects=["r.>"]))
        await provider.ensure_consumer(pb.ConsumerConfig(name="w", stream_name="R"))
        acked: set[int] = set()
        for i in range(50):
            acked.add(await publish_until_acked(provider, OutboundMessage("r.x", b"%d" % i)))
        first = await provider.fetch("R", "w", 20, 2)
        await provider.settle([m.ack_token for m in first], AckAction.ACK)
        seen = {m.sequence for m in first}

        server.kill()
        await server.restart()

        for i in range(50, 100):
            acked.add(await publish_until_acked(provider, OutboundMessage("r.x", b"%d" % i)))
        deadline = time.monotonic() + 30
        while not acked <= seen:
            assert time.monotonic() < deadline, f"missing {sorted(acked - seen)[:10]}"
            try:
                batch = await provider.fetch("R", "w", 50, 1)
            except BrokerUnavailableError:
                continue  # still reconnecting; fetch waited max_wait, no spin
            await provider.settle([m.ack_token for m in batch], AckAction.ACK)
            seen |= {m.sequence for m in batch}
        assert len(acked) == 100
        assert provider.connected
    finally:
        await provider.close()


async def test_fetch_during_outage_waits_then_fails(nats_server_fresh: EmbeddedNats) -> None:
    server = nats_server_fresh
    provider = NatsProvider(pb.ClusterConfig(), server.url, broker_name="bus")
    await provider.connect(5)
    try:
        await provider.ensure_stream(pb.StreamConfig(name="O", subjects=["o.>"]))
        await provider.ensure_consumer(pb.ConsumerConfig(name="w", stream_name="O"))
        assert await provider.fetch("O", "w", 1, 0.2) == []
        await server.halt()  # down, not restarted yet
        start = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as err:
            while True:  # the first fetch may still see the old socket as open
                await provider.fetch("O", "w", 1, 0.5)
                assert time.monotonic() - start < 10
        assert "unreachable" in str(err.value) or "not answering" in str(err.value)
        assert not provider.connected
        await server.start()
        await publish_until_acked(provider, OutboundMessage("o.x", b"back"))
        deadline = time.monotonic() + 15
        got: list[object] = []
        while not got:
            assert time.monotonic() < deadline
            try:
                got = list(await provider.fetch("O", "w", 1, 1))
            except BrokerUnavailableError:
                continue
    finally:
        await provider.close()
