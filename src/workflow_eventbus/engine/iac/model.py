"""The records the IaC builders exchange: a broker in, modules, sidecars and files out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..._proto import eventbus_pb2 as pb
from ...core.defaults import DEFAULT_DO_IAC_PROVIDER
from ...core.errors import ConfigError
from ...core.names import BROKER


@dataclass(frozen=True, slots=True)
class Broker:
    """One ``eventbus.broker`` module of the app and the streams that use it."""

    name: str
    config: pb.ClusterConfig
    streams: tuple[pb.StreamConfig, ...] = ()

    @property
    def where(self) -> str:
        return f'{BROKER} "{self.name}"'


@dataclass(frozen=True, slots=True)
class Options:
    """Choices the app config does not hold (``infra`` command flags)."""

    do_provider: str = DEFAULT_DO_IAC_PROVIDER  # iac.provider module for App Platform modules
    k8s_sidecar: bool = False  # kubernetes: NATS as a sidecar of the app pod, not a StatefulSet


@dataclass(frozen=True, slots=True)
class InfraModule:
    """An ``infra.*`` module of the generated imports file."""

    name: str
    type: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class File:
    """A file for a tool other than wfctl infra, relative to the generated files folder."""

    path: str
    text: str
    used_by: str  # the command that reads it, for the imports file's header


@dataclass(slots=True)
class Built:
    modules: list[InfraModule] = field(default_factory=list)
    sidecars: list[dict[str, Any]] = field(default_factory=list)
    files: list[File] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_DNS_LABEL = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")


def resource_name(broker: Broker, suffix: str, *, limit: int) -> str:
    """``<broker>-<suffix>`` as a DNS label (lower case, '-' for '_') of at most ``limit``."""
    name = f"{broker.name.lower().replace('_', '-')}-{suffix}"
    if len(name) > limit or not _DNS_LABEL.fullmatch(name):
        raise ConfigError(
            f"{broker.where}: name",
            f"cannot name generated resources {name!r} (a DNS label of at most {limit} "
            "characters: a-z, 0-9, '-', starting with a letter)",
            value=broker.name,
            fix=f"rename the broker module (at most {limit - len(suffix) - 1} characters)",
        )
    return name
