"""IaC resource declarations for each provider x deploy target.

Declarations only: this module turns a broker (and its streams) into a list of
provider-neutral :class:`Resource` records that an IaC engine applies; it never
calls a cloud API. The digitalocean.app_platform shapes match the Go plugin's
(resource kinds, names, properties and labels), so existing plans keep working;
every other target, which the Go plugin left as "not implemented" stubs, is
declared here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .._proto import eventbus_pb2 as pb
from ..core.config import duration_seconds
from ..core.defaults import DEFAULT_KAFKA_VERSION, DEFAULT_NATS_VERSION
from ..core.errors import ConfigError
from ..providers import REGISTRY
from ..providers.targets import (
    AWS_ECS,
    AWS_EKS,
    AWS_KINESIS,
    AWS_MSK,
    DIGITALOCEAN_APP_PLATFORM,
    DIGITALOCEAN_MANAGED_KAFKA,
    IN_PROCESS,
    KUBERNETES,
    SELF_HOSTED,
)

NATS_PORTS = "4222,8222,6222"


@dataclass(frozen=True)
class Resource:
    kind: str
    name: str
    properties: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Output:
    value: str
    sensitive: bool = False


@dataclass(frozen=True)
class State:
    outputs: Mapping[str, Output] = field(default_factory=dict)

    def output(self, key: str) -> str:
        found = self.outputs.get(key)
        return found.value if found else ""


def resources(cfg: pb.ClusterConfig) -> list[Resource]:
    """The resources that make up the broker ``cfg`` on its deploy target."""
    spec = REGISTRY.get(cfg.provider)
    declared = sorted({provider for provider, _ in _BUILDERS})
    if spec is None or cfg.provider not in declared:
        raise ConfigError(
            "provider",
            "has no IaC declarations",
            value=cfg.provider,
            fix=f"use one of: {', '.join(declared)}",
        )
    # A provider without deploy targets (pgchannel) has one shape, keyed by "".
    target = cfg.deploy_target if spec.deploy_targets else ""
    if spec.deploy_targets and target not in spec.deploy_targets:
        raise ConfigError(
            "deploy_target",
            f"provider {cfg.provider} does not support this deploy target",
            value=target,
            fix=f"use one of: {', '.join(spec.deploy_targets)}",
        )
    return _BUILDERS[(cfg.provider, target)](cfg)


def _labels(cfg: pb.ClusterConfig, **extra: str) -> dict[str, str]:
    return {"provider": cfg.provider, "deploy_target": cfg.deploy_target, **extra}


def _version(cfg: pb.ClusterConfig, default: str) -> str:
    version = cfg.version or default
    if version.lower() == "latest":
        raise ConfigError(
            "version",
            "floating tags are not allowed",
            value=cfg.version,
            fix=f'pin a version tag, e.g. "{default}"',
        )
    return version


def _replicas(cfg: pb.ClusterConfig) -> int:
    return cfg.replicas if cfg.replicas > 0 else 1


def nats_run_command(cfg: pb.ClusterConfig, *, store_dir: str = "/data") -> str:
    """nats-server flags: monitoring, JetStream limits, and the cluster listener."""
    flags = ["-m 8222"]
    js = cfg.jetstream
    if js.enabled:
        flags += ["-js", f"-sd {store_dir}"]
        if js.max_storage_bytes > 0:
            flags.append(f"-ms {js.max_storage_bytes}")
        if js.max_memory_bytes > 0:
            flags.append(f"-mm {js.max_memory_bytes}")
    flags.append("--cluster nats://0.0.0.0:6222")
    return " ".join(flags)


def _nats_storage(cfg: pb.ClusterConfig, name: str = "nats-jetstream") -> list[Resource]:
    if not cfg.jetstream.enabled:
        return []
    size = cfg.jetstream.max_storage_bytes
    props = {"storage_size_bytes": str(size)} if size > 0 else {}
    return [Resource("infra.storage", name, props, {"provider": "nats", "purpose": "jetstream"})]


def _nats_container(cfg: pb.ClusterConfig) -> list[Resource]:
    props = {
        "image": f"docker.io/library/nats:{_version(cfg, DEFAULT_NATS_VERSION)}",
        "instance_count": str(_replicas(cfg)),
        "run_command": nats_run_command(cfg),
        "internal_ports": NATS_PORTS,
    }
    if cfg.jetstream.enabled:
        props["storage_ref"] = "nats-jetstream"
    if cfg.deploy_target == AWS_ECS:
        props["launch_type"] = "FARGATE"
    _limits(props, cfg)
    return [Resource("infra.container_service", "nats", props, _labels(cfg)), *_nats_storage(cfg)]


def _nats_kubernetes(cfg: pb.ClusterConfig) -> list[Resource]:
    replicas = _replicas(cfg)
    routes = ",".join(f"nats://nats-{i}.nats-headless:6222" for i in range(replicas))
    props = {
        "image": f"docker.io/library/nats:{_version(cfg, DEFAULT_NATS_VERSION)}",
        "replicas": str(replicas),
        "service_name": "nats-headless",
        "args": nats_run_command(cfg) + (f" --routes {routes}" if replicas > 1 else ""),
        "ports": NATS_PORTS,
    }
    if cfg.jetstream.enabled and cfg.jetstream.max_storage_bytes > 0:
        props["volume_claim_bytes"] = str(cfg.jetstream.max_storage_bytes)
    _limits(props, cfg)
    labels = _labels(cfg)
    return [
        Resource("kubernetes.statefulset", "nats", props, labels),
        Resource(
            "kubernetes.service",
            "nats-headless",
            {"cluster_ip": "None", "ports": NATS_PORTS},
            labels,
        ),
        Resource("kubernetes.service", "nats", {"ports": "4222"}, labels),
    ]


def _nats_self_hosted(cfg: pb.ClusterConfig) -> list[Resource]:
    props = {
        "version": _version(cfg, DEFAULT_NATS_VERSION),
        "instance_count": str(_replicas(cfg)),
        "run_command": nats_run_command(cfg, store_dir="/var/lib/nats"),
        "ports": NATS_PORTS,
    }
    return [Resource("nats.server", "nats", props, _labels(cfg))]


def _kafka(cfg: pb.ClusterConfig) -> list[Resource]:
    kafka = cfg.kafka
    props = {
        "version": _version(cfg, DEFAULT_KAFKA_VERSION),
        "broker_count": str(max(_replicas(cfg), 3 if cfg.deploy_target == AWS_MSK else 1)),
        "default_replication_factor": str(kafka.default_replication_factor or 1),
        "min_insync_replicas": str(kafka.min_insync_replicas or 1),
        "security_protocol": pb.KafkaSecurityProtocol.Name(kafka.security_protocol),
    }
    if kafka.sasl_mechanism:
        props["sasl_mechanism"] = pb.KafkaSaslMechanism.Name(kafka.sasl_mechanism)
    _limits(props, cfg)
    kind = {
        DIGITALOCEAN_MANAGED_KAFKA: "infra.database",
        AWS_MSK: "aws.msk_cluster",
        KUBERNETES: "kubernetes.kafka_cluster",
        SELF_HOSTED: "kafka.cluster",
    }[cfg.deploy_target]
    if kind == "infra.database":
        props["engine"] = "kafka"
    return [Resource(kind, "kafka", props, _labels(cfg))]


def _kinesis(cfg: pb.ClusterConfig) -> list[Resource]:
    k = cfg.kinesis
    if not k.region:
        raise ConfigError(
            "kinesis.region",
            "is required for aws.kinesis",
            fix="set kinesis.region, e.g. us-east-1",
        )
    props = {
        "region": k.region,
        "shard_count": str(k.shard_count or 1),
        "retention_period_hours": str(k.retention_period_hours or 24),
    }
    return [Resource("aws.kinesis_stream", "kinesis", props, _labels(cfg))]


def _pgchannel(cfg: pb.ClusterConfig) -> list[Resource]:
    props = {"schema": cfg.schema or "public", "max_conns": str(cfg.max_conns or 16)}
    labels = {"provider": "pgchannel", "broker_target": IN_PROCESS}
    return [Resource("postgres.schema", "eventbus", props, labels)]


def _limits(props: dict[str, str], cfg: pb.ClusterConfig) -> None:
    for key in ("cpu", "memory", "storage"):
        value = getattr(cfg.limits, key)
        if value:
            props[f"limit_{key}"] = value


_BUILDERS: dict[tuple[str, str], Callable[[pb.ClusterConfig], list[Resource]]] = {
    ("nats", DIGITALOCEAN_APP_PLATFORM): _nats_container,
    ("nats", AWS_ECS): _nats_container,
    ("nats", AWS_EKS): _nats_kubernetes,
    ("nats", KUBERNETES): _nats_kubernetes,
    ("nats", SELF_HOSTED): _nats_self_hosted,
    **{("kafka", t): _kafka for t in REGISTRY["kafka"].deploy_targets},
    ("kinesis", AWS_KINESIS): _kinesis,
    ("pgchannel", ""): _pgchannel,
}


def stream_resources(streams: Sequence[pb.StreamConfig], state: State) -> list[Resource]:
    """One ``nats.stream_create`` resource per stream (Go property names)."""
    out = []
    for i, s in enumerate(streams):
        if not s.name:
            raise ConfigError(f"streams[{i}].name", "is required", fix="name every stream")
        if not s.subjects:
            raise ConfigError(
                f'stream "{s.name}": subjects',
                "must contain at least one entry",
                fix='set subjects, e.g. ["orders.>"]',
            )
        retention = {
            pb.RETENTION_POLICY_INTEREST: "interest",
            pb.RETENTION_POLICY_WORKQUEUE: "workqueue",
        }
        props = {
            "name": s.name,
            "subjects": ",".join(s.subjects),
            "retention_policy": retention.get(s.retention_policy, "limits"),
            "num_replicas": str(s.num_replicas if s.num_replicas > 0 else 1),
            "max_bytes": str(s.max_bytes),
        }
        uri = state.output("uri")
        if uri:
            props["server_uri"] = uri
        for key in ("max_age", "ack_wait"):
            seconds = duration_seconds(getattr(s, key))
            if seconds > 0:
                props[key] = go_duration(seconds)
        out.append(Resource("nats.stream_create", s.name, props, {"provider": "nats"}))
    return out


def go_duration(seconds: float) -> str:
    """Go's time.Duration text: ``168h0m0s``, ``30s``, ``1m30s``, ``500ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - whole
    sec_text = f"{secs + frac:g}s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text


def connection_string(state: State, env: str = "") -> str:
    """``uri.<env>`` when present, else ``uri``."""
    uri = (env and state.output(f"uri.{env}")) or state.output("uri")
    if not uri:
        raise ConfigError(
            "state.outputs.uri",
            "not found",
            fix="provision the cluster first (its state must carry a uri output)",
        )
    return uri


async def probe(host: str, port: int, timeout: float = 2.0) -> str:
    """``healthy`` when a NATS server answers INFO on host:port, else ``unreachable``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return "unreachable"
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return "degraded"
    finally:
        writer.close()
    return "healthy" if line.startswith(b"INFO ") else "degraded"
