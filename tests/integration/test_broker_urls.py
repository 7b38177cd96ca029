"""Where a broker's URL comes from when its config has no ``dsn``, on real servers."""

from __future__ import annotations

import pytest

from workflow_eventbus import EventBus, create_step
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError


async def _publish_once(bus: EventBus, subject: str) -> pb.PublishResponse:
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": subject})
    result: pb.PublishResponse = await step.execute(pb.PublishRequest(payload=b"{}"))
    return result


@pytest.mark.postgres
async def test_pgchannel_without_dsn_takes_eventbus_name_uri(pg_dsn: str, pg_schema: str) -> None:
    bus = EventBus(environ={"EVENTBUS_ORDERS_BUS_URI": pg_dsn})
    broker = bus.create_module(
        "eventbus.broker",
        "orders-bus",
        {"provider": "pgchannel", "broker_target": "in_process", "schema": pg_schema},
    )
    stream = bus.create_module(
        "eventbus.stream", "s", {"name": "URI_ORDERS", "subjects": ["uri.>"]}
    )
    try:
        await broker.start()
        await stream.start()
        assert broker.url == pg_dsn  # type: ignore[attr-defined]
        result = await _publish_once(bus, "uri.created")
        assert result.stream == "URI_ORDERS" and int(result.sequence) >= 1
    finally:
        await bus.close()


async def test_pgchannel_without_any_url_fails_at_start_naming_both_sources() -> None:
    bus = EventBus(environ={})
    broker = bus.create_module(
        "eventbus.broker", "orders-bus", {"provider": "pgchannel", "broker_target": "in_process"}
    )
    await broker.init()  # init only resolves the URL; a missing one is not an error yet
    with pytest.raises(ConfigError) as err:
        await broker.start()
    text = str(err.value)
    assert 'eventbus.broker "orders-bus": dsn' in text
    assert "set dsn or EVENTBUS_ORDERS_BUS_URI" in text
    await bus.close()


async def test_nats_without_url_starts_degraded_and_lookups_say_why() -> None:
    bus = EventBus(environ={})
    broker = bus.create_module(
        "eventbus.broker", "bus", {"provider": "nats", "deploy_target": "self_hosted"}
    )
    await broker.start()  # declared for IaC flows: no error, but no runtime
    with pytest.raises(Exception, match="set dsn, EVENTBUS_BUS_URI or NATS_URL"):
        bus.provider("bus")
    await bus.close()


async def test_nats_url_from_nats_url_variable(nats_url: str) -> None:
    bus = EventBus(environ={"NATS_URL": nats_url})
    broker = bus.create_module(
        "eventbus.broker", "bus", {"provider": "nats", "deploy_target": "self_hosted"}
    )
    try:
        await broker.start()
        assert bus.provider("bus").connected
    finally:
        await bus.close()
