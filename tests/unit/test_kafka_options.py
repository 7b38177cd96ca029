"""The kafka provider's pure rules: URLs, security options, topic names, sequences, tokens."""

from __future__ import annotations

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError, RequestError
from workflow_eventbus.providers import REGISTRY, spec_for, validate_cluster
from workflow_eventbus.providers.kafka.options import client_options, parse_url
from workflow_eventbus.providers.kafka.topics import (
    Token,
    decode_sequence,
    encode_sequence,
    parse_token,
    topic_for,
)

SELF = "self_hosted"


def test_url_forms() -> None:
    parsed = parse_url("kafka://alice:s%40cret@k1:9093,k2")
    assert parsed.servers == ["k1:9093", "k2:9092"]
    assert (parsed.user, parsed.password) == ("alice", "s@cret")
    assert parse_url("127.0.0.1:1234").servers == ["127.0.0.1:1234"]
    with pytest.raises(ConfigError, match="not a kafka URL"):
        parse_url("nats://x:4222")
    with pytest.raises(ConfigError, match="host:port"):
        parse_url("kafka://k1:notaport")
    with pytest.raises(ConfigError, match="names no Kafka server"):
        parse_url("kafka://")


def test_security_protocol_follows_credentials_and_tls(tmp_path: object) -> None:
    plain = client_options(pb.ClusterConfig(), "kafka://k:9092", where="b")
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in plain
    sasl = client_options(pb.ClusterConfig(), "kafka://u:p@k:9092", where="b")
    assert sasl["security_protocol"] == "SASL_PLAINTEXT"
    assert (sasl["sasl_mechanism"], sasl["sasl_plain_username"]) == ("SCRAM-SHA-512", "u")
    chosen = pb.ClusterConfig(
        user="v",
        password="w",
        kafka=pb.KafkaConfig(
            security_protocol=pb.KAFKA_SECURITY_PROTOCOL_SASL_SSL,
            sasl_mechanism=pb.KAFKA_SASL_MECHANISM_SCRAM_SHA_256,
        ),
    )
    both = client_options(chosen, "kafka://u:p@k:9092", where="b")
    assert both["security_protocol"] == "SASL_SSL" and both["ssl_context"] is not None
    assert (both["sasl_mechanism"], both["sasl_plain_username"]) == ("SCRAM-SHA-256", "v")


def test_sasl_without_a_password_names_the_fix_and_no_secret() -> None:
    cfg = pb.ClusterConfig(
        kafka=pb.KafkaConfig(security_protocol=pb.KAFKA_SECURITY_PROTOCOL_SASL_SSL)
    )
    with pytest.raises(ConfigError, match="needs a user and a password"):
        client_options(cfg, "kafka://k:9092", where="b")
    plain = pb.ClusterConfig(
        kafka=pb.KafkaConfig(security_protocol=pb.KAFKA_SECURITY_PROTOCOL_PLAINTEXT)
    )
    with pytest.raises(ConfigError, match="does not use SASL") as err:
        client_options(plain, "kafka://u:topsecret@k:9092", where="b")
    assert "topsecret" not in str(err.value)


def test_tls_files_must_exist() -> None:
    cfg = pb.ClusterConfig(tls=pb.TlsConfig(ca_file="/no/such/ca.pem"))
    with pytest.raises(ConfigError, match="tls.ca_file"):
        client_options(cfg, "kafka://k:9092", where="b")


def test_registry_validates_kafka_settings() -> None:
    ok = pb.ClusterConfig(provider="kafka", deploy_target=SELF)
    validate_cluster("bus", ok)
    for bad, setting in (
        (pb.ClusterConfig(provider="kafka", deploy_target=SELF, token="t"), "token"),
        (
            pb.ClusterConfig(
                provider="kafka",
                deploy_target=SELF,
                kafka=pb.KafkaConfig(
                    security_protocol=pb.KAFKA_SECURITY_PROTOCOL_PLAINTEXT,
                    sasl_mechanism=pb.KAFKA_SASL_MECHANISM_PLAIN,
                ),
            ),
            "kafka.sasl_mechanism",
        ),
        (
            pb.ClusterConfig(
                provider="kafka",
                deploy_target=SELF,
                kafka=pb.KafkaConfig(default_replication_factor=1, min_insync_replicas=2),
            ),
            "kafka.min_insync_replicas",
        ),
    ):
        with pytest.raises(ConfigError) as err:
            validate_cluster("bus", bad)
        assert err.value.setting.endswith(setting)


def test_a_nats_token_on_a_kafka_broker_is_refused_without_showing_it() -> None:
    secret = "s3cr3t-t0ken-value"
    bad = pb.ClusterConfig(provider="kafka", deploy_target=SELF, token=secret)
    with pytest.raises(ConfigError) as err:
        validate_cluster("bus", bad)
    assert err.value.setting.endswith("token")
    assert secret not in str(err.value)
    assert secret not in repr(err.value.value)


def test_negative_replication_settings_name_a_fix() -> None:
    bad = pb.ClusterConfig(
        provider="kafka", deploy_target=SELF, kafka=pb.KafkaConfig(min_insync_replicas=-1)
    )
    with pytest.raises(ConfigError) as err:
        validate_cluster("bus", bad)
    assert err.value.fix


def test_kafka_runs_and_kinesis_says_which_providers_do() -> None:
    spec = spec_for("kafka")
    assert spec.runs and spec.url_schemes == ("kafka",)
    assert spec.load().__name__ == "KafkaProvider"
    with pytest.raises(ConfigError) as err:
        REGISTRY["kinesis"].load()
    assert "IaC declarations only" in str(err.value)
    assert "nats" in err.value.fix and "pgchannel" in err.value.fix and "kafka" in err.value.fix


def test_importing_the_package_does_not_import_the_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, workflow_eventbus.providers.kafka as k; "
        "import workflow_eventbus.providers.kafka.rules; "
        "print('aiokafka' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("orders.created", "orders.created"),
        ("orders.>", "orders._all"),
        ("orders.*.paid", "orders._any.paid"),
        ("eventbus.deadletter.>", "eventbus.deadletter._all"),
    ],
)
def test_topic_names(pattern: str, topic: str) -> None:
    assert topic_for(pattern, setting="subjects[0]") == topic


def test_a_subject_kafka_cannot_name_is_refused_with_the_rule() -> None:
    with pytest.raises(ConfigError) as err:
        topic_for("orders.créé", setting='eventbus.stream "S": subjects[1]')
    assert err.value.setting.endswith("subjects[1]") and err.value.value == "orders.créé"
    assert "_all" in str(err.value)


def test_sequences_round_trip_and_start_at_one() -> None:
    assert encode_sequence(0, 0, 0) == 1
    for position in ((0, 0, 41), (3, 7, 123_456_789), (2047, 4095, (1 << 40) - 2)):
        assert decode_sequence(encode_sequence(*position)) == position
    assert encode_sequence(2047, 4095, (1 << 40) - 2) < 1 << 63


def test_tokens_round_trip_and_garbage_is_a_request_error() -> None:
    token = Token("S", "c", "orders._all", 2, 99, 3)
    assert parse_token(token.text()) == token
    for bad in ("not-a-token", "k1|S|c|t|x|1|1", "k1||c|t|0|1|1"):
        with pytest.raises(RequestError):
            parse_token(bad)


def test_url_sources_and_scheme() -> None:
    from workflow_eventbus.providers import broker_url, provider_for_url, url_sources

    env = {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"}
    assert broker_url("bus", "kafka", env) == "k1:9092,k2:9092"
    assert broker_url("bus", "kafka", {**env, "EVENTBUS_BUS_URI": "kafka://k3:9092"}) == (
        "kafka://k3:9092"
    )
    assert url_sources("bus", "kafka") == "dsn, EVENTBUS_BUS_URI or KAFKA_BOOTSTRAP_SERVERS"
    assert provider_for_url("kafka://k1:9092").name == "kafka"
    assert parse_url(broker_url("bus", "kafka", env)).servers == ["k1:9092", "k2:9092"]
