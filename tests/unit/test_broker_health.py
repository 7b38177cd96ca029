"""Broker connection state: provider -> broker module -> bus (telemetry, listeners, health).

The providers' own transitions against real servers are in
tests/integration/test_plugin_health.py; here the memory double stands in, and
``report_state`` is called the way a provider's connection callbacks call it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from workflow_eventbus import EventBus
from workflow_eventbus.engine.modules import BrokerModule
from workflow_eventbus.engine.telemetry import Telemetry
from workflow_eventbus.plugin.health import BusHealth

pytestmark = pytest.mark.asyncio(loop_scope="session")
_ids = itertools.count()
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class States(Telemetry):
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def broker_state(self, broker: str, up: bool) -> None:
        self.seen.append((broker, up))


async def started_bus(telemetry: Telemetry) -> tuple[EventBus, BrokerModule]:
    bus = EventBus(environ={}, test_doubles=True, telemetry=telemetry)
    broker = bus.create_module(
        "eventbus.broker", "bus", {"provider": "memory", "dsn": f"memory://h{next(_ids)}"}
    )
    assert isinstance(broker, BrokerModule)
    await broker.start()
    return bus, broker


async def test_transitions_reach_telemetry_listeners_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    states = States()
    bus, broker = await started_bus(states)
    heard: list[tuple[str, bool]] = []
    remove = bus.on_broker_state(lambda name, up: heard.append((name, up)))
    provider = broker.provider
    assert states.seen == [("bus", True)]  # started
    assert bus.brokers_down() == []

    caplog.set_level(logging.INFO, "workflow_eventbus")
    provider.report_state(False, "connect to postgresql://u:hunter2@db/x refused")
    provider.report_state(False, "again")  # not a change: dropped
    assert bus.brokers_down() == ["bus"]
    (lost,) = [r for r in caplog.records if getattr(r, "event", "") == "broker.lost"]
    assert lost.levelno == logging.WARNING
    assert lost.broker == "bus" and lost.provider == "memory"  # type: ignore[attr-defined]
    assert "hunter2" not in lost.reason and "u:***@" in lost.reason  # type: ignore[attr-defined]
    assert "hunter2" not in lost.getMessage()

    provider.report_state(True)
    assert bus.brokers_down() == []
    assert [r.event for r in caplog.records if hasattr(r, "event")] == [
        "broker.lost",
        "broker.restored",
    ]

    remove()
    remove()  # twice is harmless
    await bus.close()
    assert states.seen == [("bus", True), ("bus", False), ("bus", True), ("bus", False)]
    assert heard == [("bus", False), ("bus", True)]  # removed before the stop
    assert bus.brokers_down() == []


async def test_a_stopped_broker_is_not_down_and_close_is_not_a_lost_connection() -> None:
    states = States()
    bus, broker = await started_bus(states)
    provider = broker.provider
    provider.report_state(False, "gone")
    assert bus.brokers_down() == ["bus"]
    await broker.stop()
    assert bus.brokers_down() == []
    assert states.seen == [("bus", True), ("bus", False)]  # no second down on stop
    provider.report_state(True)  # a late callback of the closed provider: ignored
    assert states.seen == [("bus", True), ("bus", False)]


async def test_a_failing_listener_never_reaches_the_provider(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, broker = await started_bus(Telemetry())

    def broken(name: str, up: bool) -> None:
        raise RuntimeError("listener bug")

    bus.on_broker_state(broken)
    broker.provider.report_state(False, "gone")  # does not raise
    assert bus.brokers_down() == ["bus"]
    assert any("listener failed" in r.getMessage() for r in caplog.records)
    await bus.close()


async def test_a_degraded_broker_without_url_is_not_down() -> None:
    bus = EventBus(environ={})
    broker = bus.create_module(
        "eventbus.broker", "iac", {"provider": "nats", "deploy_target": "self_hosted"}
    )
    await broker.start()  # no URL: declared for IaC flows, no connection
    assert bus.brokers_down() == []
    assert BusHealth(bus).status() == SERVING
    await bus.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[EventBus, BrokerModule, grpc.aio.Channel]]:
    bus, broker = await started_bus(Telemetry())
    health = BusHealth(bus)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"unix:{tmp_path / 'h.sock'}"
    server.add_insecure_port(address)
    await server.start()
    channel = grpc.aio.insecure_channel(address)
    try:
        yield bus, broker, channel
    finally:
        await channel.close()
        await server.stop(0)
        health.close()
        await bus.close()


async def test_check_follows_the_brokers(
    served: tuple[EventBus, BrokerModule, grpc.aio.Channel],
) -> None:
    _bus, broker, channel = served
    stub = health_pb2_grpc.HealthStub(channel)

    async def check(service: str) -> int:
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        return int(answer.status)

    assert (await check("plugin"), await check("")) == (SERVING, SERVING)
    broker.provider.report_state(False, "gone")
    assert (await check("plugin"), await check("")) == (NOT_SERVING, NOT_SERVING)
    broker.provider.report_state(True)
    assert await check("plugin") == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check("workflow.plugin.v1.PluginService")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'plugin'" in (err.value.details() or "")


async def test_watch_streams_each_change(
    served: tuple[EventBus, BrokerModule, grpc.aio.Channel],
) -> None:
    _bus, broker, channel = served
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="plugin")
    )
    assert (await asyncio.wait_for(stream.read(), 5)).status == SERVING
    broker.provider.report_state(False, "gone")
    assert (await asyncio.wait_for(stream.read(), 5)).status == NOT_SERVING
    broker.provider.report_state(True)
    assert (await asyncio.wait_for(stream.read(), 5)).status == SERVING
    stream.cancel()
