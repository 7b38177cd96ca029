"""Property tests: random configs into every decoder, the module factory and the
trigger parser. Only typed errors (EventbusError) may come out, never a crash;
names with SQL-injection attempts, invalid subjects and oversized batches are refused.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import decode
from workflow_eventbus.core.errors import ConfigError, EventbusError
from workflow_eventbus.core.subjects import validate_subject
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.trigger import parse_trigger_config

MESSAGES = [
    pb.ClusterConfig,
    pb.StreamConfig,
    pb.ConsumerConfig,
    pb.PublishRequest,
    pb.ConsumeRequest,
    pb.AckRequest,
    pb.PublishStepConfig,
    pb.ConsumeStepConfig,
    pb.AckStepConfig,
    pb.TlsConfig,
]
FIELD_NAMES = sorted(
    {f.name for m in MESSAGES for f in m.DESCRIPTOR.fields} | {"consumer", "bus", "workflowType"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["1s", "-5s", "1h2m", "999999999999h", "ALL", "explicit", "nats", "🙂"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
configs = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), values, max_size=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(message=st.sampled_from(MESSAGES), config=configs)
def test_decode_raises_only_config_errors(message: Any, config: dict[str, Any]) -> None:
    try:
        decoded = decode(message, config, setting="fuzz")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz")  # names the setting
        return
    assert isinstance(decoded, message)


@FUZZ
@given(message=st.sampled_from(MESSAGES), config=configs)
def test_decode_struct_and_json_forms(message: Any, config: dict[str, Any]) -> None:
    try:
        text = json.dumps(config, allow_nan=False)
    except (ValueError, TypeError):
        return  # not representable as JSON: the mapping form above covers it
    struct = struct_pb2.Struct()
    json_format.ParseDict(json.loads(text), struct)
    for form in (struct, text):
        with contextlib.suppress(ConfigError):
            decode(message, form, setting="fuzz")


@FUZZ
@given(
    kind=st.sampled_from(["eventbus.broker", "eventbus.stream", "eventbus.consumer", "bogus"]),
    config=configs,
)
def test_module_factory_raises_only_typed_errors(kind: str, config: dict[str, Any]) -> None:
    bus = EventBus(environ={})
    with contextlib.suppress(EventbusError):
        bus.create_module(kind, "m", config)


@FUZZ
@given(config=configs)
def test_trigger_parser_raises_only_typed_errors(config: dict[str, Any]) -> None:
    bus = EventBus(environ={})
    bus.create_module(
        "eventbus.consumer", "c", {"name": "worker", "stream_name": "ORDERS", "max_deliver": 3}
    )
    try:
        cfg = parse_trigger_config(bus, config, instance="pipeline:fuzz")
    except EventbusError:
        return
    assert isinstance(cfg, pb.ConsumerConfig)


INJECTIONS = [
    "x'; DROP TABLE eventbus_events; --",
    'ORDERS" OR 1=1 --',
    "a b",
    "orders.*",
    "orders.>",
    "",
    "dot.name",
    "tab\tname",
    "slash/name",
]


@pytest.mark.parametrize("name", INJECTIONS)
@pytest.mark.parametrize("kind", ["stream", "consumer"])
@pytest.mark.parametrize("provider", ["nats", "pgchannel"])
def test_hostile_names_are_rejected(name: str, kind: str, provider: str) -> None:
    bus = EventBus(environ={})
    broker = {"provider": provider, "dsn": "x://y"}
    broker |= (
        {"deploy_target": "self_hosted"} if provider == "nats" else {"broker_target": "in_process"}
    )
    bus.create_module("eventbus.broker", "bus", broker)
    if kind == "stream":
        config = {"name": name, "subjects": ["orders.>"], "broker_ref": "bus"}
        module = "eventbus.stream"
    else:
        config = {"name": name, "stream_name": "ORDERS", "broker_ref": "bus"}
        module = "eventbus.consumer"
    with pytest.raises(ConfigError) as info:
        bus.create_module(module, "m", config)
    assert "name" in str(info.value)


@pytest.mark.parametrize(
    "subject", ["", "a..b", ".a", "a.", "a b", "a.*", "a.>", "a\tb", "a\r\nPUB x 1"]
)
def test_invalid_publish_subjects_are_rejected(subject: str) -> None:
    with pytest.raises(ConfigError):
        validate_subject(subject, setting="subject", wildcards=False)


@FUZZ
@given(subject=st.text(max_size=40))
def test_subject_validation_is_total(subject: str) -> None:
    try:
        validate_subject(subject, setting="subject", wildcards=False)
    except ConfigError:
        return
    assert subject and " " not in subject and "*" not in subject and ">" not in subject
