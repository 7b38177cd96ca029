"""Strict config decoding and the validation rules, error texts included."""

import json

import pytest
from google.protobuf import struct_pb2

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import decode, duration_seconds, parse_duration, parse_enum
from workflow_eventbus.core.errors import ConfigError, redact
from workflow_eventbus.core.names import env_key
from workflow_eventbus.core.validation import (
    validate_consumer,
    validate_stream,
    validate_subject,
)
from workflow_eventbus.providers import broker_url as env_url
from workflow_eventbus.providers import validate_cluster


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("1m30s", 90),
        ("2h", 7200),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0", 0),
        (3, 3),
        ("10", 10),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text, setting="x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "1x", "m", "", "-1s", True, [1], 9.3e18, "100000000000h"])
def test_bad_durations_name_setting_value_and_fix(bad):
    with pytest.raises(ConfigError) as err:
        parse_duration(bad, setting='eventbus.consumer "c": ack_wait')
    text = str(err.value)
    assert text.startswith('eventbus.consumer "c": ack_wait')
    assert repr(bad) in text or "positive" in text


@pytest.mark.parametrize("value", ["ACK_POLICY_EXPLICIT", "explicit", "Explicit", 1, "1", 1.0])
def test_enum_forms(value):
    assert (
        parse_enum(pb.AckPolicy.DESCRIPTOR, value, setting="ack_policy") == pb.ACK_POLICY_EXPLICIT
    )


def test_enum_error_lists_choices():
    with pytest.raises(ConfigError, match=r"use one of: explicit, none, all") as err:
        parse_enum(pb.AckPolicy.DESCRIPTOR, "sometimes", setting="c: ack_policy")
    assert "'sometimes'" in str(err.value)


def test_decode_accepts_yaml_like_mapping():
    cfg = decode(
        pb.ConsumerConfig,
        {
            "name": "w",
            "stream_name": "S",
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": "42",
            "max_deliver": 5.0,
            "ackWait": "1m30s",
            "backoff": ["1s", "5s"],
            "_config_dir": "/ignored",
        },
        setting="c",
    )
    assert cfg.deliver_policy == pb.DELIVER_POLICY_BY_START_SEQUENCE
    assert cfg.opt_start_seq == 42 and cfg.max_deliver == 5
    assert duration_seconds(cfg.ack_wait) == 90
    assert [duration_seconds(d) for d in cfg.backoff] == [1, 5]


def test_decode_struct_and_json_forms_agree():
    data = {"name": "ORDERS", "subjects": ["orders.>"], "max_bytes": "1048576", "max_age": "24h"}
    struct = struct_pb2.Struct()
    struct.update(data)
    a = decode(pb.StreamConfig, data, setting="s")
    b = decode(pb.StreamConfig, struct, setting="s")
    c = decode(pb.StreamConfig, json.dumps(data), setting="s")
    assert a == b == c
    assert a.max_bytes == 1048576 and duration_seconds(a.max_age) == 86400


def test_unknown_key_names_key_path_and_valid_keys():
    with pytest.raises(ConfigError) as err:
        decode(
            pb.ClusterConfig,
            {"provider": "nats", "jetstream": {"enabeld": True}},
            setting='eventbus.broker "bus"',
        )
    text = str(err.value)
    assert 'eventbus.broker "bus".jetstream.enabeld' in text
    assert "valid keys are: enabled, max_age, max_memory_bytes, max_storage_bytes" in text


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"max_conns": "many"}, "max_conns: expected an integer (got 'many')"),
        ({"max_conns": 2**40}, "out of range"),
        ({"provider": ["nats"]}, "provider: expected a string"),
        ({"jetstream": "yes"}, "expected an object (JetStreamConfig)"),
        ({"jetstream": {"enabled": "perhaps"}}, "expected true or false"),
    ],
)
def test_type_errors(data, needle):
    with pytest.raises(ConfigError) as err:
        decode(pb.ClusterConfig, data, setting="b")
    assert needle in str(err.value)


def test_cluster_rules():
    ok = [
        pb.ClusterConfig(provider="nats", deploy_target="self_hosted"),
        # no dsn: EVENTBUS_<NAME>_URI supplies it at init (README), checked at start
        pb.ClusterConfig(provider="pgchannel", broker_target="in_process"),
        pb.ClusterConfig(provider="pgchannel", broker_target="in_process", dsn="postgresql://x/y"),
        pb.ClusterConfig(provider="kafka", deploy_target="aws.msk"),
        pb.ClusterConfig(provider="kinesis", deploy_target="aws.kinesis"),
    ]
    for cfg in ok:
        validate_cluster("bus", cfg)
    validate_cluster("bus", pb.ClusterConfig(provider="memory"), test_doubles=True)
    cases = [
        (
            pb.ClusterConfig(),
            'eventbus.broker "bus": provider: is required; set provider to one of: nats, pgchannel, kafka, kinesis',
        ),
        (pb.ClusterConfig(provider="NATS"), "unsupported provider (got 'NATS')"),
        (
            pb.ClusterConfig(provider="nats"),
            "deploy_target: is required for provider nats; set deploy_target to one of: digitalocean.app_platform, aws.ecs, aws.eks, kubernetes, self_hosted",
        ),
        (
            pb.ClusterConfig(provider="nats", deploy_target="aws.kinesis"),
            "does not support this deploy target (got 'aws.kinesis')",
        ),
        (pb.ClusterConfig(provider="kinesis", deploy_target="aws.msk"), "use one of: aws.kinesis"),
        (
            pb.ClusterConfig(provider="pgchannel", dsn="postgresql://x"),
            "pgchannel requires broker_target=in_process",
        ),
        (
            pb.ClusterConfig(provider="memory"),
            "provider: is the in-process unit-test double and is not offered to applications (got 'memory')",
        ),
        (
            pb.ClusterConfig(provider="nats", deploy_target="self_hosted", poll_interval="often"),
            "poll_interval: not a duration",
        ),
    ]
    for cfg, needle in cases:
        with pytest.raises(ConfigError) as err:
            validate_cluster("bus", cfg)
        assert needle in str(err.value)


def test_stream_rules():
    validate_stream("s", pb.StreamConfig(name="ORDERS", subjects=["orders.*", "orders.>"]))
    for cfg, needle in [
        (pb.StreamConfig(subjects=["a"]), "name: is required"),
        (pb.StreamConfig(name="ORD.ERS", subjects=["a"]), "stream names cannot contain"),
        (pb.StreamConfig(name="ORDERS"), "subjects: must contain at least one entry"),
        (
            pb.StreamConfig(name="ORDERS", subjects=["orders.>.x"]),
            "subjects[0]: '>' is only allowed as the last token",
        ),
        (pb.StreamConfig(name="ORDERS", subjects=["ok", "a..b"]), "subjects[1]: empty token"),
    ]:
        with pytest.raises(ConfigError) as err:
            validate_stream("s", cfg)
        assert needle in str(err.value)


def test_consumer_rules():
    validate_consumer(
        "c", pb.ConsumerConfig(name="w", stream_name="S", filter_subject="orders.*.x")
    )
    for cfg, needle in [
        (pb.ConsumerConfig(stream_name="S"), 'eventbus.consumer "c": name: is required'),
        (pb.ConsumerConfig(name="w"), "stream_name: is required"),
        (pb.ConsumerConfig(name="w.x", stream_name="S"), "durable names cannot contain"),
        (
            pb.ConsumerConfig(name="w", stream_name="S", filter_subject="a.b*"),
            "must be whole tokens",
        ),
        (
            pb.ConsumerConfig(
                name="w", stream_name="S", max_deliver=2, backoff=[{"seconds": 1}] * 2
            ),
            "make max_deliver larger",
        ),
        (
            pb.ConsumerConfig(
                name="w", stream_name="S", deliver_policy=pb.DELIVER_POLICY_BY_START_SEQUENCE
            ),
            "opt_start_seq: is required",
        ),
        (
            pb.ConsumerConfig(name="w", stream_name="S", dead_letter_subject="dlq.*"),
            "wildcards are not allowed",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            validate_consumer("c", cfg)
        assert needle in str(err.value)


def test_publish_subjects_refuse_wildcards():
    validate_subject("orders.created", setting="s", wildcards=False)
    with pytest.raises(ConfigError, match="wildcards are not allowed"):
        validate_subject("orders.>", setting="s", wildcards=False)
    with pytest.raises(ConfigError, match="white space"):
        validate_subject("orders created", setting="s", wildcards=True)


def test_env_key_and_url_precedence():
    assert env_key("bmw-eventbus") == "BMW_EVENTBUS"
    assert env_key("bus.a") == "BUS.A"
    assert env_key("straße") == "STRAßE"  # like Go's rune-wise ToUpper
    env = {"EVENTBUS_MY_BUS_URI": "nats://a:4222", "NATS_URL": "nats://b:4222"}
    assert env_url("my-bus", "nats", env) == "nats://a:4222"
    assert env_url("other", "nats", env) == "nats://b:4222"
    assert env_url("other", "pgchannel", env) == ""
    assert (
        env_url("other", "nats", {"EVENTBUS_OTHER_URI": "", "NATS_URL": "nats://c"}) == "nats://c"
    )


def test_redact_hides_secrets():
    assert (
        redact("dial nats://alice:s3cret@host:4222 failed")
        == "dial nats://alice:***@host:4222 failed"
    )
    assert redact("postgresql://u:pw@db/x") == "postgresql://u:***@db/x"
    assert "hunter2" not in redact("host=db password=hunter2 user=u")
    assert "tok" not in redact("token=tok&x=1").split("=")[1]


def test_config_error_redacts_its_value():
    err = ConfigError("dsn", "bad", value="postgresql://u:pw@db/x")
    assert "pw@" not in str(err)


def test_names_longer_than_jetstream_allows_are_refused():
    with pytest.raises(ConfigError, match="is 256 characters long; at most 255"):
        validate_stream("s", pb.StreamConfig(name="S" * 256, subjects=["a"]))
    with pytest.raises(ConfigError, match="at most 255"):
        validate_consumer("c", pb.ConsumerConfig(name="c" * 300, stream_name="S"))


def test_opt_start_time_is_checked_when_the_config_is_read():
    cfg = pb.ConsumerConfig(
        name="w",
        stream_name="S",
        deliver_policy=pb.DELIVER_POLICY_BY_START_TIME,
        opt_start_time="yesterday",
    )
    with pytest.raises(
        ConfigError, match=r"opt_start_time: not an RFC 3339 time \(got 'yesterday'\)"
    ):
        validate_consumer("c", cfg)


def test_tails_consumer_prefix_is_reserved():
    cfg = pb.ConsumerConfig(name="eventbus_ephemeral_0123456789abcdef", stream_name="S")
    with pytest.raises(ConfigError, match="temporary consumers of tail"):
        validate_consumer("c", cfg)
