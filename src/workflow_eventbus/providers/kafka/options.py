"""Kafka client options from a ClusterConfig and a URL: servers, SASL/SCRAM, TLS (pure).

URL forms: ``kafka://[user[:password]@]host:port[,host:port...]`` or a bare
``host:port[,host:port...]`` (``KAFKA_BOOTSTRAP_SERVERS``). Credentials come from
the URL or from the ``user``/``password`` settings (the settings win); they are
never logged (errors pass through ``redact``). The security protocol is
``kafka.security_protocol`` when set; else SASL when there is a user, and SSL
when a ``tls`` CA/client certificate is set (SASL_SSL when both).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..._proto import eventbus_pb2 as pb
from ...core.defaults import DEFAULT_KAFKA_PORT, DEFAULT_KAFKA_SASL_MECHANISM
from ...core.errors import ConfigError
from ..nats.options import tls_context

SCHEME = "kafka"

PROTOCOLS = {
    pb.KAFKA_SECURITY_PROTOCOL_PLAINTEXT: "PLAINTEXT",
    pb.KAFKA_SECURITY_PROTOCOL_SSL: "SSL",
    pb.KAFKA_SECURITY_PROTOCOL_SASL_PLAINTEXT: "SASL_PLAINTEXT",
    pb.KAFKA_SECURITY_PROTOCOL_SASL_SSL: "SASL_SSL",
}
MECHANISMS = {
    pb.KAFKA_SASL_MECHANISM_PLAIN: "PLAIN",
    pb.KAFKA_SASL_MECHANISM_SCRAM_SHA_256: "SCRAM-SHA-256",
    pb.KAFKA_SASL_MECHANISM_SCRAM_SHA_512: "SCRAM-SHA-512",
}


@dataclass(slots=True)
class ParsedUrl:
    servers: list[str]
    user: str = ""
    password: str = field(default="", repr=False)


def parse_url(url: str, *, setting: str = "dsn") -> ParsedUrl:
    """Servers and credentials of a kafka URL (or a bare server list)."""
    text = url.strip()
    user = password = ""
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme.lower() != SCHEME:
            raise ConfigError(
                setting,
                "is not a kafka URL",
                value=f"{scheme}://...",
                fix="write kafka://host:9092[,host2:9092]",
            )
    text = text.split("/", 1)[0].split("?", 1)[0]
    if "@" in text:
        auth, text = text.rsplit("@", 1)
        user, _, password = auth.partition(":")
        user, password = unquote(user), unquote(password)
    servers = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, str(DEFAULT_KAFKA_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                setting,
                "lists a server that is not host:port",
                value=part,
                fix="write kafka://host:9092[,host2:9092]",
            )
        servers.append(f"{host}:{int(port)}")
    if not servers:
        raise ConfigError(
            setting, "names no Kafka server", fix="write kafka://host:9092[,host2:9092]"
        )
    return ParsedUrl(servers, user, password)


def _has_tls_files(cluster: pb.ClusterConfig) -> bool:
    tls = cluster.tls
    return cluster.HasField("tls") and bool(tls.ca_file or tls.cert_file or tls.key_file)


def security_protocol(cluster: pb.ClusterConfig, user: str) -> str:
    if cluster.kafka.security_protocol:
        return PROTOCOLS[cluster.kafka.security_protocol]
    sasl, tls = bool(user), _has_tls_files(cluster)
    return {
        (False, False): "PLAINTEXT",
        (False, True): "SSL",
        (True, False): "SASL_PLAINTEXT",
        (True, True): "SASL_SSL",
    }[(sasl, tls)]


def client_options(cluster: pb.ClusterConfig, url: str, *, where: str) -> dict[str, Any]:
    """The connection keyword arguments shared by the producer, consumers and admin."""
    parsed = parse_url(url or cluster.kafka.bootstrap_servers, setting=f"{where}: dsn")
    user = cluster.user or parsed.user
    password = cluster.password or parsed.password
    protocol = security_protocol(cluster, user)
    opts: dict[str, Any] = {
        "bootstrap_servers": parsed.servers,
        "security_protocol": protocol,
    }
    if protocol.startswith("SASL_"):
        if not user or not password:
            raise ConfigError(
                f"{where}: user/password",
                f"security protocol {protocol} needs a user and a password",
                value=user or None,
                fix="put them in the URL (kafka://user:password@host:9092) or set user and "
                "password",
            )
        opts["sasl_mechanism"] = MECHANISMS.get(
            cluster.kafka.sasl_mechanism, DEFAULT_KAFKA_SASL_MECHANISM
        )
        opts["sasl_plain_username"] = user
        opts["sasl_plain_password"] = password
    elif user or password:
        raise ConfigError(
            f"{where}: kafka.security_protocol",
            "credentials are set but the security protocol does not use SASL",
            value=protocol,
            fix="use SASL_PLAINTEXT or SASL_SSL (or leave security_protocol unset)",
        )
    if protocol in ("SSL", "SASL_SSL"):
        context = tls_context(cluster.tls) if cluster.HasField("tls") else None
        opts["ssl_context"] = context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    elif _has_tls_files(cluster):
        raise ConfigError(
            f"{where}: tls",
            f"TLS files are set but the security protocol is {protocol}",
            value=protocol,
            fix="use SSL or SASL_SSL (or leave security_protocol unset)",
        )
    return opts
