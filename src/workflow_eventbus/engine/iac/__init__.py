"""What ``wfctl infra`` and the operator's tools need for each broker of an app.

:func:`generate` turns the app's brokers into a :class:`Generated`: the ``infra.*``
modules for an ``imports:`` file (what ``wfctl infra plan`` reads and an IaC
provider plugin applies), the ``sidecars:`` entries ``wfctl deploy k8s generate``
reads, and files for other tools (Kubernetes manifests for ``kubectl apply``, a
nats-server config and a systemd unit, the pgchannel migration command). What no
tool here can do is a :class:`Generated` note, written into the imports file.

The builder is picked by the provider's ``ProviderSpec.iac`` (providers/__init__.py)
and the broker's deploy target; nothing here branches on a provider's name. Nothing
here touches a file or a cloud API: the ``infra`` command writes what this returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core.errors import ConfigError
from ...core.names import BROKER
from ...providers import REGISTRY, validate_cluster
from ...providers import targets as t
from . import digitalocean, kubernetes, operator, self_hosted
from .model import Broker, Built, File, InfraModule, Options


@dataclass(slots=True)
class Generated:
    modules: list[InfraModule] = field(default_factory=list)
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    files: list[File] = field(default_factory=list)  # paths relative to the files folder
    notes: list[str] = field(default_factory=list)  # "broker: what is left to the operator"


Builder = Callable[[Broker, Options], Built]

# (ProviderSpec.iac, deploy_target) -> builder. A provider without deploy targets
# (pgchannel) is keyed by "".
BUILDERS: Mapping[tuple[str, str], Builder] = {
    (t.NATS_SERVER, t.DIGITALOCEAN_APP_PLATFORM): digitalocean.nats_app_platform,
    (t.NATS_SERVER, t.KUBERNETES): kubernetes.nats_kubernetes,
    (t.NATS_SERVER, t.AWS_EKS): kubernetes.nats_kubernetes,
    (t.NATS_SERVER, t.SELF_HOSTED): self_hosted.nats_self_hosted,
    (t.NATS_SERVER, t.AWS_ECS): operator.nats_on_ecs,
    (t.POSTGRES_SCHEMA, ""): operator.pg_migrations,
    **{
        (t.MANAGED, target): operator.managed_cluster
        for spec in REGISTRY.values()
        if spec.iac == t.MANAGED
        for target in spec.deploy_targets
    },
    (t.MANAGED, t.AWS_KINESIS): operator.managed_stream,
}


def generate(brokers: Sequence[Broker], options: Options | None = None) -> Generated:
    """Everything the brokers need, in the order they are given."""
    opts = options or Options()
    out = Generated()
    for broker in brokers:
        built = build(broker, opts)
        out.modules.extend(built.modules)
        out.sidecars.extend(built.sidecars)
        out.files.extend(built.files)
        out.notes.extend(f"{broker.name}: {note}" for note in built.notes)
    _unique([m.name for m in out.modules], "infra module")
    _unique([f.path for f in out.files], "file")
    return out


def build(broker: Broker, options: Options) -> Built:
    """What one broker needs on its deploy target."""
    cfg = broker.config
    validate_cluster(broker.name, cfg)
    spec = REGISTRY[cfg.provider]
    target = cfg.deploy_target if spec.deploy_targets else ""
    builder = BUILDERS.get((spec.iac, target))
    if builder is None:
        raise ConfigError(
            f'{BROKER} "{broker.name}": provider',
            "has nothing to generate infrastructure for",
            value=cfg.provider,
            fix="generate for a broker of a real provider (nats, pgchannel, kafka, kinesis)",
        )
    return builder(broker, options)


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(
                "broker name",
                f"two brokers generate the same {what}",
                value=name,
                fix="give the brokers names that differ after lower-casing and '-' for '_'",
            )
        seen.add(name)


__all__ = [
    "BUILDERS",
    "Broker",
    "File",
    "Generated",
    "InfraModule",
    "Options",
    "build",
    "generate",
]
