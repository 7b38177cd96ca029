"""Property tests against the real plugin process (host harness, as the engine runs it).

Random Structs, random typed payloads and random handles go to every RPC that
takes input. Every answer must come back within a deadline (no hang) as either
a normal response with an in-band error or a gRPC status (never a dead
process); afterwards the process is still healthy and works normally.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2, json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.devservers.host import PluginHost
from workflow_eventbus.providers import TEST_DOUBLES_ENV

TYPES = [
    "eventbus.broker",
    "eventbus.stream",
    "eventbus.consumer",
    "step.eventbus.publish",
    "step.eventbus.consume",
    "step.eventbus.ack",
    "trigger.eventbus.subscribe",
    "infra.eventbus",
    "nope",
    "",
]
TYPED = [
    pb.ClusterConfig,
    pb.StreamConfig,
    pb.ConsumerConfig,
    pb.PublishRequest,
    pb.ConsumeRequest,
    pb.AckRequest,
    pb.PublishStepConfig,
    pb.Message,
]
RPC_DEADLINE = 15.0


class LoopThread:
    """An event loop on its own thread, so sync hypothesis tests can drive the host."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = RPC_DEADLINE) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def plugin() -> Iterator[tuple[LoopThread, PluginHost]]:
    runner = LoopThread()
    host = PluginHost(env={TEST_DOUBLES_ENV: "1"})  # the healthy-afterwards check uses memory
    runner.run(host.start(), timeout=90)
    try:
        yield runner, host
    finally:
        runner.run(host.shutdown(), timeout=30)
        runner.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["1s", "nats", "pgchannel", "memory", "orders.>", "ALL", "-1s"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
field_names = sorted({f.name for m in TYPED for f in m.DESCRIPTOR.fields} | {"consumer", "bus"})
struct_dicts = st.dictionaries(
    st.sampled_from(field_names) | st.text(max_size=8), json_values, max_size=6
)


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(data, struct)
    return struct


@st.composite
def typed_any(draw: st.DrawFn) -> any_pb2.Any | None:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return None
    packed = any_pb2.Any()
    if choice == 1:  # a valid type URL with random bytes as the value
        message = draw(st.sampled_from(TYPED))
        packed.type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
    else:
        packed.type_url = draw(st.text(max_size=40))
    packed.value = draw(st.binary(max_size=200))
    return packed


async def call(host: PluginHost, method: str, request: Any) -> Any:
    try:
        return await host.call(method, request)
    except grpc.aio.AioRpcError as exc:
        # A status instead of an in-band error is acceptable, a crash is not.
        assert exc.code() not in (grpc.StatusCode.UNAVAILABLE,), exc
        return exc


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(
    kind=st.sampled_from(["CreateModule", "CreateStep", "CreateTrigger"]),
    type_name=st.sampled_from(TYPES) | st.text(max_size=20),
    name=st.text(max_size=20),
    config=struct_dicts,
    typed=typed_any(),
)
def test_create_rpcs_answer_random_configs(
    plugin: tuple[LoopThread, PluginHost],
    kind: str,
    type_name: str,
    name: str,
    config: dict[str, Any],
    typed: any_pb2.Any | None,
) -> None:
    runner, host = plugin
    request_type = {
        "CreateModule": ppb.CreateModuleRequest,
        "CreateStep": ppb.CreateStepRequest,
        "CreateTrigger": ppb.CreateTriggerRequest,
    }[kind]
    request = request_type(type=type_name, name=name, config=to_struct(config))
    if typed is not None and kind != "CreateTrigger":
        request.typed_config.CopyFrom(typed)
    answer = runner.run(call(host, kind, request))
    if not isinstance(answer, grpc.aio.AioRpcError) and not answer.error:
        # Created: destroying it must work too (handles are not leaked).
        op = "DestroyStep" if kind == "CreateStep" else "DestroyModule"
        runner.run(call(host, op, ppb.HandleRequest(handle_id=answer.handle_id)))


@FUZZ
@given(
    handle=st.text(max_size=40),
    op=st.sampled_from(["InitModule", "StartModule", "StopModule", "DestroyModule", "DestroyStep"]),
)
def test_lifecycle_rpcs_with_random_handles(
    plugin: tuple[LoopThread, PluginHost], handle: str, op: str
) -> None:
    runner, host = plugin
    answer = runner.run(call(host, op, ppb.HandleRequest(handle_id=handle)))
    assert isinstance(answer, grpc.aio.AioRpcError) or answer.error


@FUZZ
@given(
    step=st.sampled_from(["step.eventbus.publish", "step.eventbus.consume", "step.eventbus.ack"]),
    typed_input=typed_any(),
    typed_config=typed_any(),
    current=struct_dicts,
)
def test_execute_step_with_random_inputs(
    plugin: tuple[LoopThread, PluginHost],
    step: str,
    typed_input: any_pb2.Any | None,
    typed_config: any_pb2.Any | None,
    current: dict[str, Any],
) -> None:
    runner, host = plugin
    created = runner.run(call(host, "CreateStep", ppb.CreateStepRequest(type=step, name="fz")))
    assert not isinstance(created, grpc.aio.AioRpcError) and not created.error
    request = ppb.ExecuteStepRequest(handle_id=created.handle_id)
    if typed_input is not None:
        request.typed_input.CopyFrom(typed_input)
    if typed_config is not None:
        request.typed_config.CopyFrom(typed_config)
    if current:
        with_current = getattr(request, "current", None)
        if isinstance(with_current, struct_pb2.Struct):
            with_current.CopyFrom(to_struct(current))
    answer = runner.run(call(host, "ExecuteStep", request))
    # No broker is configured: every execution must fail in-band, with a reason.
    assert isinstance(answer, grpc.aio.AioRpcError) or answer.error
    runner.run(call(host, "DestroyStep", ppb.HandleRequest(handle_id=created.handle_id)))


def test_plugin_is_healthy_afterwards(plugin: tuple[LoopThread, PluginHost]) -> None:
    runner, host = plugin
    assert host.process is not None and host.process.returncode is None
    manifest = runner.run(host.call("GetManifest", empty_pb2.Empty()))
    assert manifest.name
    handle = runner.run(
        host.create_module("eventbus.broker", "healthy", typed=pb.ClusterConfig(provider="memory"))
    )
    runner.run(host.init_module(handle))
    runner.run(host.start_module(handle))
    runner.run(host.stop_module(handle))
