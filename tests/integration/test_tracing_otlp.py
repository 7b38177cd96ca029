"""Traces end to end: real nats-server, real OTLP/gRPC export to a receiver on loopback.

publish -> trigger -> derived publish is one trace: the consumer span is the child
of the producer span whose context the message carried, and the derived publish the
child of the consumer span (through the trigger data's traceparent), both in the
library and through the plugin process with ExecuteStep carrying ``current``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from otlp_receiver import (
    CONSUMER,
    PRODUCER,
    STATUS_ERROR,
    OtlpReceiver,
    Received,
    running_receiver,
    traceparent_prefix,
)

from workflow_eventbus import EventBus, SubscribeTrigger, create_step
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.devservers.host import PluginHost, TriggerCall
from workflow_eventbus.engine.telemetry.tracing import Tracing, tracing_from_environ

pytestmark = pytest.mark.asyncio(loop_scope="session")

_ids = itertools.count()


def _environ(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": service,
    }


async def _until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def otlp() -> AsyncIterator[OtlpReceiver]:
    async with running_receiver() as receiver:
        yield receiver


@pytest_asyncio.fixture(loop_scope="session")
async def traced_bus(otlp: OtlpReceiver, nats_url: str) -> AsyncIterator[tuple[EventBus, str, str]]:
    """A library bus on the shared nats-server with traces on: (bus, its own stream,
    the stream's subject prefix). Consumer "worker" takes ``<prefix>.in``."""
    tracing = tracing_from_environ(_environ(otlp, "bus-test"))
    assert isinstance(tracing, Tracing)
    bus = EventBus(environ={}, telemetry=tracing)
    stream = f"TRACED{next(_ids)}_{os.getpid()}"
    prefix = stream.lower()
    for module in (
        bus.create_module(
            "eventbus.broker",
            "bus",
            {"provider": "nats", "deploy_target": "self_hosted", "dsn": nats_url},
        ),
        bus.create_module("eventbus.stream", "s", {"name": stream, "subjects": [f"{prefix}.>"]}),
        bus.create_module(
            "eventbus.consumer",
            "c",
            {"name": "worker", "stream_name": stream, "filter_subject": f"{prefix}.in"},
        ),
    ):
        await module.start()
    try:
        yield bus, stream, prefix
    finally:
        await bus.close()
        # The receiver answers on this loop: flush from a thread, not by blocking it.
        await asyncio.to_thread(tracing.close)


def _by_kind(spans: list[Received], kind: int, destination: str) -> list[Received]:
    return [
        s
        for s in spans
        if s.kind == kind and s.attributes.get("messaging.destination.name") == destination
    ]


async def test_library_publish_trigger_and_derived_publishes_are_one_trace(
    otlp: OtlpReceiver, traced_bus: tuple[EventBus, str, str]
) -> None:
    bus, stream_name, prefix = traced_bus
    publish = create_step(bus, "step.eventbus.publish", "pub", {"subject": f"{prefix}.in"})
    by_header = create_step(bus, "step.eventbus.publish", "fwd", {"subject": f"{prefix}.out"})
    by_context = create_step(bus, "step.eventbus.publish", "ctx", {"subject": f"{prefix}.ctx"})
    seen: list[dict[str, Any]] = []

    async def pipeline(data: dict[str, Any]) -> None:
        seen.append(data)
        # As a pipeline would: carry the trigger data's traceparent on in the headers.
        await by_header.execute(
            pb.PublishRequest(payload=b"shipped", headers={"traceparent": data["traceparent"]})
        )
        # No headers: the consumer span is the current context of the handler.
        await by_context.execute(pb.PublishRequest(payload=b"noted"))

    trigger = SubscribeTrigger.from_trigger_config(
        bus, "pipeline:t", {"consumer": "worker"}, pipeline
    )
    await trigger.start()
    try:
        await publish.execute(pb.PublishRequest(payload=b'{"order": 1}', msg_id="order-1"))
        await _until(lambda: len(seen) == 1, what="the trigger's run")
    finally:
        await trigger.stop()

    spans = await otlp.wait_for_spans(lambda got: len(got) >= 4)
    assert len(spans) == 4, [(s.name, s.kind) for s in spans]
    [producer] = _by_kind(spans, PRODUCER, f"{prefix}.in")
    [consumer] = _by_kind(spans, CONSUMER, f"{prefix}.in")
    [derived] = _by_kind(spans, PRODUCER, f"{prefix}.out")
    [from_context] = _by_kind(spans, PRODUCER, f"{prefix}.ctx")
    assert {s.trace_id for s in spans} == {producer.trace_id}
    assert producer.parent_id == ""  # the first publish starts the trace
    assert consumer.parent_id == producer.span_id
    assert derived.parent_id == consumer.span_id
    assert from_context.parent_id == consumer.span_id

    assert producer.name == f"publish {stream_name}"
    assert producer.attributes == {
        "messaging.system": "nats",
        "messaging.destination.name": f"{prefix}.in",
        "messaging.message.id": "order-1",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.message.body.size": len(b'{"order": 1}'),
        "eventbus.broker": "bus",
        "eventbus.stream": stream_name,
    }
    assert consumer.name == f"process {stream_name}"
    data = seen[0]
    assert consumer.attributes == {
        "messaging.system": "nats",
        "messaging.destination.name": f"{prefix}.in",
        "messaging.message.id": "order-1",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": "worker",
        "messaging.message.body.size": len(b'{"order": 1}'),
        "eventbus.broker": "bus",
        "eventbus.stream": stream_name,
        "eventbus.sequence": int(data["sequence"]),
        "eventbus.delivery_count": 1,
    }
    assert producer.resource["service.name"] == "bus-test"

    # What the pipeline saw: the producer's context in the headers, the consumer's
    # in trace_id/traceparent.
    assert data["headers"]["traceparent"].startswith(traceparent_prefix(producer))
    assert data["trace_id"] == consumer.trace_id
    assert data["traceparent"].startswith(traceparent_prefix(consumer))


async def test_a_failed_run_is_an_error_span_and_its_redelivery_a_sibling(
    otlp: OtlpReceiver, traced_bus: tuple[EventBus, str, str]
) -> None:
    bus, _, prefix = traced_bus
    publish = create_step(bus, "step.eventbus.publish", "pub", {"subject": f"{prefix}.in"})
    runs: list[int] = []

    async def pipeline(data: dict[str, Any]) -> None:
        runs.append(data["delivery_count"])
        if data["delivery_count"] == 1:
            raise RuntimeError("inventory service down")

    trigger = SubscribeTrigger.from_trigger_config(
        bus, "pipeline:retry", {"consumer": "worker", "backoff": ["50ms"]}, pipeline
    )
    await trigger.start()
    try:
        await publish.execute(pb.PublishRequest(payload=b"x"))
        await _until(lambda: runs == [1, 2], what="a failure and its retry")
    finally:
        await trigger.stop()

    spans = await otlp.wait_for_spans(lambda got: len(got) >= 3)
    [producer] = _by_kind(spans, PRODUCER, f"{prefix}.in")
    consumers = sorted(
        _by_kind(spans, CONSUMER, f"{prefix}.in"),
        key=lambda s: int(s.attributes["eventbus.delivery_count"]),
    )
    assert [c.attributes["eventbus.delivery_count"] for c in consumers] == [1, 2]
    assert all(c.parent_id == producer.span_id for c in consumers)
    assert {c.trace_id for c in consumers} == {producer.trace_id}
    failed, retried = consumers
    assert failed.span.status.code == STATUS_ERROR
    assert failed.span.status.message == "inventory service down"
    assert retried.span.status.code != STATUS_ERROR


# --- through the plugin process ---------------------------------------------------------


async def test_plugin_trace_runs_through_trigger_workflow_and_execute_step(
    otlp: OtlpReceiver, nats_url: str
) -> None:
    """As the engine does it: the pipeline's publish step gets ``current`` (the trigger
    data, traceparent included) with its ExecuteStep and continues the trace."""
    tag = f"t{next(_ids)}x{os.getpid()}"
    stream, subject_in, subject_out = (
        f"PTRACE_{tag.upper()}",
        f"ptrace.{tag}.in",
        f"ptrace.{tag}.out",
    )
    calls: list[TriggerCall] = []
    forwarded: list[ppb.ExecuteStepResponse] = []
    host_ref: list[PluginHost] = []
    forward_ref: list[str] = []

    async def engine_pipeline(call: TriggerCall) -> str:
        calls.append(call)
        current = struct_pb2.Struct()
        current.update(call.data)
        request = ppb.ExecuteStepRequest(
            handle_id=forward_ref[0], current=current, trigger_data=current
        )
        # The typed input copies the incoming message (its headers carry the
        # *producer's* traceparent); the pipeline's context in ``current`` wins.
        request.typed_input.Pack(
            pb.PublishRequest(
                payload=base64.b64decode(call.data["payload"]), headers=call.data["headers"]
            )
        )
        answer: ppb.ExecuteStepResponse = await host_ref[0].call("ExecuteStep", request)
        forwarded.append(answer)
        return answer.error

    env = {**os.environ, **_environ(otlp, "plugin-under-test")}
    async with PluginHost(env=env, on_trigger=engine_pipeline) as host:
        host_ref.append(host)
        handles = [
            await host.create_module(
                "eventbus.broker",
                "bus",
                typed=pb.ClusterConfig(provider="nats", deploy_target="self_hosted", dsn=nats_url),
            ),
            await host.create_module(
                "eventbus.stream",
                "s",
                typed=pb.StreamConfig(name=stream, subjects=[f"ptrace.{tag}.>"]),
            ),
            await host.create_module(
                "eventbus.consumer",
                "c",
                typed=pb.ConsumerConfig(
                    name="traced", stream_name=stream, filter_subject=subject_in
                ),
            ),
        ]
        for handle in handles:
            await host.init_module(handle)
        for handle in handles:
            await host.start_module(handle)
        forward_ref.append(
            await host.create_step("step.eventbus.publish", "forward", {"subject": subject_out})
        )
        trigger = await host.create_trigger(
            "trigger.eventbus.subscribe", "pipeline:traced", {"consumer": "traced"}
        )
        await host.start_module(trigger)
        publish = await host.create_step("step.eventbus.publish", "in", {"subject": subject_in})
        await host.run_step(publish, pb.PublishRequest(payload=b"order"), pb.PublishResponse)
        await _until(lambda: len(forwarded) == 1, what="the pipeline's publish")
        assert forwarded[0].error == ""
        spans = await otlp.wait_for_spans(lambda got: len(got) >= 3)
        await host.stop_module(trigger)

    assert len(spans) == 3, [(s.name, s.kind) for s in spans]
    [producer] = _by_kind(spans, PRODUCER, subject_in)
    [consumer] = _by_kind(spans, CONSUMER, subject_in)
    [derived] = _by_kind(spans, PRODUCER, subject_out)
    assert {s.trace_id for s in spans} == {producer.trace_id}
    assert producer.parent_id == ""
    assert consumer.parent_id == producer.span_id
    assert derived.parent_id == consumer.span_id
    assert {s.resource["service.name"] for s in spans} == {"plugin-under-test"}
    assert consumer.attributes["messaging.system"] == "nats"
    assert consumer.attributes["messaging.consumer.group.name"] == "traced"
    assert derived.attributes["eventbus.stream"] == stream

    data = calls[0].data
    assert data["trace_id"] == producer.trace_id
    assert data["traceparent"].startswith(traceparent_prefix(consumer))
    assert data["headers"]["traceparent"].startswith(traceparent_prefix(producer))
