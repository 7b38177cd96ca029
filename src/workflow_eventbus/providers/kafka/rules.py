"""Config rules that only the kafka provider has (pure: no broker is touched)."""

from __future__ import annotations

from ..._proto import eventbus_pb2 as pb
from ...core.errors import ConfigError


def validate_kafka(where: str, cfg: pb.ClusterConfig) -> None:
    """Settings of other providers are refused; SASL/replication settings must agree.

    The URL is checked when the broker connects (it may come from the
    environment, see ``options.parse_url``)."""
    for setting, value in (
        ("token", cfg.token),
        ("nkey_seed_file", cfg.nkey_seed_file),
        ("creds_file", cfg.creds_file),
        ("schema", cfg.schema),
        ("poll_interval", cfg.poll_interval),
        ("broker_target", cfg.broker_target),
        ("tls.server_name", cfg.tls.server_name),
    ):
        if value:
            raise ConfigError(
                f"{where}: {setting}",
                "is not a kafka setting",
                value="***" if setting == "token" else value,  # a secret is never shown
                fix="remove it (kafka authenticates with user/password over SASL and TLS files)",
            )
    if cfg.tls.handshake_first:
        raise ConfigError(
            f"{where}: tls.handshake_first",
            "is not a kafka setting",
            value=True,
            fix="remove it: Kafka's TLS listeners always start with the handshake",
        )
    kafka = cfg.kafka
    plain = kafka.security_protocol in (
        pb.KAFKA_SECURITY_PROTOCOL_PLAINTEXT,
        pb.KAFKA_SECURITY_PROTOCOL_SSL,
    )
    if kafka.sasl_mechanism and plain:
        raise ConfigError(
            f"{where}: kafka.sasl_mechanism",
            "is set but kafka.security_protocol uses no SASL",
            value=pb.KafkaSaslMechanism.Name(kafka.sasl_mechanism),
            fix="use security_protocol SASL_PLAINTEXT or SASL_SSL, or remove sasl_mechanism",
        )
    for setting, number in (
        ("kafka.default_replication_factor", kafka.default_replication_factor),
        ("kafka.min_insync_replicas", kafka.min_insync_replicas),
    ):
        if number < 0:
            raise ConfigError(
                f"{where}: {setting}",
                "must be zero (the broker's default) or positive",
                value=number,
                fix=f"set {setting} to a positive number, or remove it for the broker's default",
            )
    replication = kafka.default_replication_factor
    if replication and kafka.min_insync_replicas > replication:
        raise ConfigError(
            f"{where}: kafka.min_insync_replicas",
            f"exceeds kafka.default_replication_factor {replication}: no write could succeed",
            value=kafka.min_insync_replicas,
            fix="set it at most the replication factor",
        )
