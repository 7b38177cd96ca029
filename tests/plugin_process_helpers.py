"""What the plugin-process tests share: one plugin process per test module (``host``),
its TriggerWorkflow recorder, broker "bus" with stream PLUGIN_IT (``bus``), helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest_asyncio
from google.protobuf import struct_pb2

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import PluginHost, TriggerCall


async def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.02)


class Recorder:
    """TriggerWorkflow handler: records calls; can fail chosen deliveries."""

    def __init__(self) -> None:
        self.calls: list[TriggerCall] = []
        self.fail: Callable[[TriggerCall], str] = lambda call: ""
        self.hook: Callable[[TriggerCall], Any] | None = None

    async def __call__(self, call: TriggerCall) -> str:
        self.calls.append(call)
        if self.hook is not None:
            await self.hook(call)
        return self.fail(call)

    def for_workflow(self, workflow_type: str) -> list[TriggerCall]:
        return [c for c in self.calls if c.trigger_type == workflow_type]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def recorder() -> Recorder:
    return Recorder()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def host(recorder: Recorder) -> AsyncIterator[PluginHost]:
    async with PluginHost(on_trigger=recorder) as plugin_host:
        yield plugin_host


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bus(host: PluginHost, nats_url: str) -> dict[str, str]:
    """Broker "bus" and stream PLUGIN_IT (subjects it.>) created over gRPC, typed configs."""
    broker = await host.create_module(
        "eventbus.broker",
        "bus",
        typed=pb.ClusterConfig(provider="nats", deploy_target="self_hosted", dsn=nats_url),
    )
    stream = await host.create_module(
        "eventbus.stream",
        "it-stream",
        typed=pb.StreamConfig(name="PLUGIN_IT", subjects=["it.>"], broker_ref="bus"),
    )
    for handle in (broker, stream):
        await host.init_module(handle)
    for handle in (broker, stream):
        await host.start_module(handle)
    return {"broker": broker, "stream": stream}


async def make_consumer(host: PluginHost, name: str, subject: str) -> str:
    handle = await host.create_module(
        "eventbus.consumer",
        name,
        typed=pb.ConsumerConfig(
            name=name, stream_name="PLUGIN_IT", filter_subject=subject, broker_ref="bus"
        ),
    )
    await host.init_module(handle)
    await host.start_module(handle)
    return handle


async def consumer_info(nats_url: str, durable: str) -> Any:
    nc = await nats.connect(nats_url)
    try:
        return await nc.jetstream().consumer_info("PLUGIN_IT", durable)
    finally:
        await nc.close()


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def declare(
    host: PluginHost,
    url: str,
    stream: str,
    consumer: dict[str, Any],
    *,
    provider: str = "nats",
    stream_extra: dict[str, Any] | None = None,
) -> None:
    """Broker "bus" on ``url``, stream ``stream`` of ``<stream>.>`` and one consumer,
    created, initialised and started in the plugin as the engine would."""
    handles = [
        await host.create_module(
            "eventbus.broker",
            "bus",
            typed=pb.ClusterConfig(provider=provider, deploy_target="self_hosted", dsn=url),
        ),
        await host.create_module(
            "eventbus.stream",
            "s",
            {
                "name": stream,
                "subjects": [f"{stream.lower()}.>"],
                "broker_ref": "bus",
                **(stream_extra or {}),
            },
        ),
        await host.create_module(
            "eventbus.consumer",
            "c",
            {"stream_name": stream, "broker_ref": "bus", **consumer},
        ),
    ]
    for handle in handles:
        await host.init_module(handle)
    for handle in handles:
        await host.start_module(handle)
