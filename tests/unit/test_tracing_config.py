"""Traces: off unless the OTEL_* variables ask (and then free), settings read strictly,
trace fields in the trigger data the same on both encoders."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import struct_pb2

from workflow_eventbus import EventBus, SubscribeTrigger, create_step
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.engine.telemetry import OFF, combine
from workflow_eventbus.engine.telemetry.tracing import tracing_from_environ, tracing_settings
from workflow_eventbus.engine.trigger import fill_trigger_struct, trigger_data
from workflow_eventbus.providers.base import Delivery
from workflow_eventbus.providers.memory import MemoryBroker

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
_ids = itertools.count()


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "100"},  # no endpoint
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_off_unless_an_endpoint_is_set_and_the_sdk_enabled(environ: dict[str, str]) -> None:
    assert tracing_settings(environ) is None
    assert tracing_from_environ(environ) is None
    assert combine([tracing_from_environ(environ)]) is OFF


def test_settings_come_from_the_environ_given() -> None:
    settings = tracing_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:4317",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer s3cret",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false",
            "OTEL_SERVICE_NAME": "orders",
            "OTEL_SDK_DISABLED": "false",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
        }
    )
    assert settings is not None
    assert settings.endpoint == "https://traces.example:4317"  # the traces variable wins
    assert settings.service_name == "orders"
    assert settings.insecure is False
    assert settings.headers == "authorization=Bearer s3cret"
    assert "s3cret" not in repr(settings)
    assert dict(settings.batch) == {"schedule_delay_millis": 100, "max_export_batch_size": 64}
    defaults = tracing_settings({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert defaults is not None
    assert defaults.service_name == "workflow-plugin-eventbus"
    assert (defaults.insecure, defaults.headers, dict(defaults.batch)) == (None, None, {})


@pytest.mark.parametrize(
    ("environ", "variable", "fix"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "PROTOCOL", "grpc"),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "TRACES_PROTOCOL",
            "4317",
        ),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector"}, "OTLP_ENDPOINT", "host:port"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c:4317"}, "OTLP_ENDPOINT", "http://host:4317"),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "1"}, "OTEL_SDK_DISABLED", "true or false"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "OTLP_INSECURE", "true or false"),
        ({**ENDPOINT, "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "SCHEDULE_DELAY", "milliseconds"),
        ({**ENDPOINT, "OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "MAX_QUEUE_SIZE", "a count"),
    ],
)
def test_values_we_cannot_honour_name_the_variable_and_the_fix(
    environ: dict[str, str], variable: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        tracing_settings(environ)
    text = str(caught.value)
    assert variable in caught.value.setting and fix in text
    assert "(got " in text


def test_endpoint_credentials_are_not_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://user:hunter2@c:4317"})
    assert "hunter2" not in str(caught.value)


def test_off_never_loads_the_sdk_or_the_exporter() -> None:
    """What the plugin does at start-up with no OTEL_* variables, in a fresh interpreter."""
    probe = (
        "import sys\n"
        "from workflow_eventbus.plugin.observability import telemetry_from_environ\n"
        "from workflow_eventbus.engine.telemetry import OFF\n"
        "assert telemetry_from_environ({}) is OFF\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.exporter')))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


async def test_off_adds_no_headers_and_no_trigger_fields() -> None:
    bus = EventBus(environ={}, test_doubles=True, telemetry=combine([tracing_from_environ({})]))
    url = f"memory://traces-off{next(_ids)}"
    for module in (
        bus.create_module("eventbus.broker", "bus", {"provider": "memory", "dsn": url}),
        bus.create_module("eventbus.stream", "s", {"name": "OFF", "subjects": ["off.>"]}),
        bus.create_module("eventbus.consumer", "c", {"name": "w", "stream_name": "OFF"}),
    ):
        await module.start()
    seen: list[dict[str, Any]] = []

    async def handler(data: dict[str, Any]) -> None:
        seen.append(data)

    trigger = SubscribeTrigger.from_trigger_config(bus, "p", {"consumer": "w"}, handler)
    try:
        await trigger.start()
        step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "off.x"})
        await step.execute(pb.PublishRequest(payload=b"{}", headers={"tenant": "t1"}))
        deadline = time.monotonic() + 5
        while not seen:
            assert time.monotonic() < deadline, "no delivery"
            await asyncio.sleep(0.01)
    finally:
        await trigger.stop()
        await bus.close()
        MemoryBroker.reset()
    assert seen[0]["headers"] == {"tenant": "t1"}
    assert not {"trace_id", "traceparent", "tracestate"} & set(seen[0])


def test_trace_fields_are_the_same_in_both_trigger_encoders() -> None:
    delivery = Delivery(
        "S", "c", "a.b", b'{"k": [1, 2]}', {"h": "v"}, 3, datetime.now(UTC), 1, "token"
    )
    extra = {"trace_id": "ab" * 16, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    data = trigger_data(delivery, extra)
    assert (data["trace_id"], data["traceparent"]) == (extra["trace_id"], extra["traceparent"])
    direct = struct_pb2.Struct()
    fill_trigger_struct(delivery, direct, extra=extra)
    expected = struct_pb2.Struct()
    expected.update(data)
    assert direct == expected
    bare = struct_pb2.Struct()
    fill_trigger_struct(delivery, bare, extra={})
    assert "trace_id" not in bare.fields and bare == _struct(trigger_data(delivery))


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out
