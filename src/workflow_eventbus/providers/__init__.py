"""The provider registry: every ``provider:`` value, its runtime class and what it needs.

This is the one place that knows which providers exist. Config validation,
the broker module, the contract registry's provider options, the CLI and the
conformance suite all read :data:`REGISTRY`; nothing outside this package
branches on a provider's name: the IaC generator (``engine/iac``) picks its
builders by ``ProviderSpec.iac`` and the deploy target. Adding a provider is one
entry here plus its package.

A runtime class is imported on first use (``spec.load()``), so validating a
config does not import every broker's client library (the provider packages load
their providers lazily).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._proto import eventbus_pb2 as pb
from ..core.config import parse_duration
from ..core.errors import ConfigError
from ..core.names import BROKER, env_key
from . import targets as t
from .kafka.rules import validate_kafka
from .pgchannel.rules import validate_pgchannel

if TYPE_CHECKING:
    from .base import Feature, Provider

Validator = Callable[[str, pb.ClusterConfig], None]

# Set to 1 in the plugin process's environment to let the engine use the test double.
TEST_DOUBLES_ENV = "WORKFLOW_EVENTBUS_TEST_DOUBLES"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What one ``provider:`` value means."""

    name: str
    summary: str
    runtime: str = ""  # "package.module:Class"; "" = IaC declarations only, no runtime
    deploy_targets: tuple[str, ...] = ()  # valid deploy_target values; () = none needed
    url_env: tuple[str, ...] = ()  # fallbacks after EVENTBUS_<NAME>_URI, in order
    url_schemes: tuple[str, ...] = ()  # URL schemes that name this provider (CLI --url)
    url_required: bool = True  # False: a broker without a URL starts degraded (IaC flows)
    defaults: Mapping[str, str] = field(default_factory=dict)  # settings the CLI fills in
    test_double: bool = False  # refused unless the EventBus opts in (tests)
    validate: Validator | None = None  # provider-specific rules beyond the common ones
    iac: str = t.MANAGED  # what the IaC generator produces: targets.NATS_SERVER, ...

    @property
    def runs(self) -> bool:
        return bool(self.runtime)

    def load(self) -> type[Provider]:
        """The runtime class (imported now); a ConfigError for declaration-only providers."""
        if not self.runtime:
            raise ConfigError(
                "provider",
                "has IaC declarations only; no runtime exists for it",
                value=self.name,
                fix=f"use provider {' or '.join(runtime_names())} for publish/consume",
            )
        module_name, class_name = self.runtime.split(":")
        cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
        return cls

    @property
    def features(self) -> frozenset[Feature]:
        """What the runtime class declares it can do (empty without a runtime)."""
        return self.load().features if self.runtime else frozenset()

    def create(self, cluster: pb.ClusterConfig, url: str, broker_name: str) -> Provider:
        return self.load()(cluster, url, broker_name=broker_name)

    def fill_defaults(self, cfg: pb.ClusterConfig) -> pb.ClusterConfig:
        """Set the provider and the settings it requires that ``cfg`` leaves empty
        (for the CLI and the demo, which only know a URL); returns ``cfg``."""
        cfg.provider = self.name
        for setting, value in self.defaults.items():
            if not getattr(cfg, setting):
                setattr(cfg, setting, value)
        return cfg


REGISTRY: Mapping[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "nats",
            "NATS JetStream",
            runtime="workflow_eventbus.providers.nats:NatsProvider",
            deploy_targets=(
                t.DIGITALOCEAN_APP_PLATFORM,
                t.AWS_ECS,
                t.AWS_EKS,
                t.KUBERNETES,
                t.SELF_HOSTED,
            ),
            url_env=("NATS_URL",),
            url_schemes=("nats", "tls", "ws", "wss"),
            url_required=False,
            defaults={"deploy_target": t.SELF_HOSTED},
            iac=t.NATS_SERVER,
        ),
        ProviderSpec(
            "pgchannel",
            "PostgreSQL only (tables, row locks, LISTEN/NOTIFY)",
            runtime="workflow_eventbus.providers.pgchannel:PgChannelProvider",
            url_schemes=("postgres", "postgresql"),
            defaults={"broker_target": t.IN_PROCESS},
            validate=validate_pgchannel,
            iac=t.POSTGRES_SCHEMA,
        ),
        ProviderSpec(
            "kafka",
            "Apache Kafka (topics, consumer groups, committed offsets)",
            runtime="workflow_eventbus.providers.kafka:KafkaProvider",
            deploy_targets=(
                t.DIGITALOCEAN_MANAGED_KAFKA,
                t.AWS_MSK,
                t.KUBERNETES,
                t.SELF_HOSTED,
            ),
            url_env=("KAFKA_BOOTSTRAP_SERVERS",),
            url_schemes=("kafka",),
            defaults={"deploy_target": t.SELF_HOSTED},
            validate=validate_kafka,
        ),
        ProviderSpec(
            "kinesis",
            "AWS Kinesis (IaC declarations only)",
            deploy_targets=(t.AWS_KINESIS,),
        ),
        ProviderSpec(
            "memory",
            "in-process unit-test double",
            runtime="workflow_eventbus.providers.memory:MemoryProvider",
            url_required=False,
            test_double=True,
            iac="",
        ),
    )
}


def offered(*, test_doubles: bool = False) -> list[str]:
    """The provider names a user may write (test doubles only when opted in)."""
    return [s.name for s in REGISTRY.values() if test_doubles or not s.test_double]


def runtime_names() -> list[str]:
    """Providers with a runtime that users may pick (not the test double)."""
    return [s.name for s in REGISTRY.values() if s.runs and not s.test_double]


def spec_for(name: str, *, where: str = "provider", test_doubles: bool = False) -> ProviderSpec:
    """The spec of ``name``; a ConfigError naming the choices when it is not offered."""
    spec = REGISTRY.get(name)
    choices = ", ".join(offered(test_doubles=test_doubles))
    if not name:
        raise ConfigError(where, "is required", fix=f"set provider to one of: {choices}")
    if spec is None:
        raise ConfigError(
            where, "unsupported provider", value=name, fix=f"use one of: {choices} (lower case)"
        )
    if spec.test_double and not test_doubles:
        raise ConfigError(
            where,
            "is the in-process unit-test double and is not offered to applications",
            value=name,
            fix=f"use one of: {choices}",
        )
    return spec


def validate_cluster(name: str, cfg: pb.ClusterConfig, *, test_doubles: bool = False) -> None:
    """Every rule of a broker config: the provider's own, then the common ones."""
    where = f'{BROKER} "{name}"'
    spec = spec_for(cfg.provider, where=f"{where}: provider", test_doubles=test_doubles)
    if spec.deploy_targets:
        valid = ", ".join(spec.deploy_targets)
        if not cfg.deploy_target:
            raise ConfigError(
                f"{where}: deploy_target",
                f"is required for provider {spec.name}",
                fix=f"set deploy_target to one of: {valid}",
            )
        if cfg.deploy_target not in spec.deploy_targets:
            raise ConfigError(
                f"{where}: deploy_target",
                f"provider {spec.name} does not support this deploy target",
                value=cfg.deploy_target,
                fix=f"use one of: {valid}",
            )
    if spec.validate is not None:
        spec.validate(where, cfg)
    if cfg.max_conns < 0:
        raise ConfigError(f"{where}: max_conns", "must be zero or positive", value=cfg.max_conns)
    if cfg.poll_interval:
        seconds = parse_duration(cfg.poll_interval, setting=f"{where}: poll_interval")
        if seconds <= 0:
            raise ConfigError(
                f"{where}: poll_interval", "must be positive", value=cfg.poll_interval
            )


def broker_url(name: str, provider: str, environ: Mapping[str, str]) -> str:
    """A broker's URL when its config has no ``dsn``: ``EVENTBUS_<NAME>_URI``, then the
    provider's own variables (``NATS_URL`` for nats)."""
    spec = REGISTRY.get(provider)
    for variable in (f"EVENTBUS_{env_key(name)}_URI", *(spec.url_env if spec else ())):
        if environ.get(variable):
            return environ[variable]
    return ""


def url_sources(name: str, provider: str) -> str:
    """Where a URL may come from, for error messages: ``dsn, EVENTBUS_BUS_URI or NATS_URL``."""
    spec = REGISTRY.get(provider)
    sources = ["dsn", f"EVENTBUS_{env_key(name)}_URI", *(spec.url_env if spec else ())]
    return ", ".join(sources[:-1]) + " or " + sources[-1]


def provider_for_url(url: str) -> ProviderSpec:
    """The provider a URL's scheme names (``nats://`` -> nats, ``postgresql://`` -> pgchannel)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    for spec in REGISTRY.values():
        if scheme and scheme in spec.url_schemes:
            return spec
    known = ", ".join(f"{s}:// ({p.name})" for p in REGISTRY.values() for s in p.url_schemes)
    raise ConfigError(
        "--url",
        "cannot tell the provider from the URL scheme",
        value=scheme or url,
        fix=f"use one of {known}, or pass --provider",
    )


def test_doubles_allowed(environ: Mapping[str, str]) -> bool:
    return environ.get(TEST_DOUBLES_ENV, "") == "1"


__all__ = [
    "REGISTRY",
    "TEST_DOUBLES_ENV",
    "ProviderSpec",
    "broker_url",
    "offered",
    "provider_for_url",
    "runtime_names",
    "spec_for",
    "test_doubles_allowed",
    "url_sources",
    "validate_cluster",
]
