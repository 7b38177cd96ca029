"""One driver per resource type: create, read, update, delete, diff and drift for real.

Streams and consumers are made on the broker through the engine layer (an
``EventBus`` with one ``eventbus.broker`` for the resource's URL; the provider
must have the ``admin`` capability for read/diff/delete). The broker URL is the
resource's ``url`` setting, else the ``iac.provider`` module's ``url``. (wfctl
v0.85.4 replaces ``${...}`` in these settings from the environment before the
plugin sees them, so ``${<server>.url}`` arrives empty: give the server a fixed
``port`` and write its URL, or use an environment variable such as ``${NATS_URL}``.)
Provider ids never hold credentials: when a stored id's broker is the
``iac.provider``'s, that URL (with its credentials) is used to reach it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..._proto import eventbus_pb2 as pb
from ..._proto import iac_pb2 as ipb
from ...core.config import decode, parse_duration
from ...core.defaults import DEFAULT_CONNECT_TIMEOUT
from ...core.errors import BrokerUnavailableError, ConfigError, NotFoundError
from ...core.names import BROKER
from ...core.validation import validate_consumer, validate_stream
from ...engine.bus import EventBus
from ...providers import REGISTRY, provider_for_url
from ...providers.base import HasAdmin, Provider, SettingDrift
from ...providers.capabilities import providers_with, require_admin
from . import server, wire
from .wire import BrokerObject


@dataclass(frozen=True, slots=True)
class Settings:
    """The ``iac.provider`` module's settings (InitializeRequest.config_json)."""

    url: str = ""  # default broker of streams and consumers
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        ours, url = wire.split_config(config)
        where = f"iac.provider {wire.PROVIDER_NAME}"
        timeout = ours.pop("connect_timeout", None)
        if ours:
            raise ConfigError(
                f"{where}: {sorted(ours)[0]}",
                "unknown key",
                fix=f"valid keys are: provider, {wire.URL_KEY}, connect_timeout",
            )
        if timeout is None:
            return cls(url=url)
        seconds = parse_duration(timeout, setting=f"{where}: connect_timeout")
        if seconds <= 0:
            raise ConfigError(
                f"{where}: connect_timeout",
                "must be positive",
                value=timeout,
                fix="set a duration above zero, e.g. connect_timeout: 10s, or leave it out",
            )
        return cls(url=url, connect_timeout=seconds)


@asynccontextmanager
async def admin_for(url: str, settings: Settings) -> AsyncIterator[tuple[Provider, HasAdmin]]:
    """A connected provider for ``url`` (closed on exit) with its admin capability."""
    try:
        spec = provider_for_url(url)
    except ConfigError as exc:
        raise ConfigError(
            wire.URL_KEY,
            "names no broker this plugin knows",
            value=wire.public_url(url),
            fix=f"use a URL of a provider with the {HasAdmin.feature.value} capability: "
            f"{_admin_url_schemes()} (e.g. nats://127.0.0.1:<the server's port>)",
        ) from exc
    if not issubclass(spec.load(), HasAdmin):  # before connecting: it would not help
        raise ConfigError(
            wire.URL_KEY,
            f"provider {spec.name} has no {HasAdmin.feature.value} capability ({HasAdmin.summary})",
            value=wire.public_url(url),
            fix=f"use a broker whose provider is {' or '.join(providers_with(HasAdmin))}",
        )
    cluster = spec.fill_defaults(pb.ClusterConfig(dsn=url))
    cluster.connect_timeout.FromNanoseconds(int(settings.connect_timeout * 1e9))
    bus = EventBus()
    try:
        await bus.create_module(BROKER, "iac", cluster).start()
        provider = bus.provider("iac")
        yield provider, require_admin(provider)
    finally:
        await bus.close()


def _admin_url_schemes() -> str:
    """``nats://, tls://, ... (nats), ... or kafka:// (kafka)``: every provider with
    the admin capability, from the registry, with the URL schemes that pick it."""
    named = [
        f"{', '.join(f'{s}://' for s in REGISTRY[name].url_schemes)} ({name})"
        for name in providers_with(HasAdmin)
        if REGISTRY[name].url_schemes
    ]
    return " or ".join(named) if named else "none today"


class Driver(abc.ABC):
    """What the ResourceDriver service needs of each resource type."""

    resource_type: ClassVar[str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def create(self, spec: ipb.ResourceSpec) -> ipb.ResourceOutput: ...

    @abc.abstractmethod
    async def read(self, ref: ipb.ResourceRef) -> ipb.ResourceOutput:
        """The resource as it is now; NotFoundError when it is gone."""

    @abc.abstractmethod
    async def update(self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec) -> ipb.ResourceOutput: ...

    @abc.abstractmethod
    async def delete(self, ref: ipb.ResourceRef) -> bool:
        """Remove it; False when it was already gone."""

    @abc.abstractmethod
    async def diff(self, desired: ipb.ResourceSpec, current: ipb.ResourceOutput) -> ipb.DiffResult:
        """What apply would change: the desired config against the live resource."""

    @abc.abstractmethod
    async def drift(
        self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec | None
    ) -> list[SettingDrift] | None:
        """Live settings that differ from ``spec`` (none compared without one);
        None when the resource is gone."""

    def _output(self, name: str, provider_id: str, outputs: dict[str, Any]) -> ipb.ResourceOutput:
        return ipb.ResourceOutput(
            name=name,
            type=self.resource_type,
            provider_id=provider_id,
            outputs_json=wire.dump_json(outputs),
            sensitive={key: False for key in outputs},
            status="running",
        )


# -- streams and consumers ----------------------------------------------------------


class BrokerDriver(Driver):
    """Shared by streams and consumers: both live on a broker named by a URL."""

    def _url(self, name: str, url: str) -> str:
        url = url or self.settings.url
        if not url:
            raise ConfigError(
                f'{self.resource_type} "{name}": {wire.URL_KEY}',
                "is required (or came empty: wfctl fills ${...} from the environment, "
                "so a ${<resource>.<output>} reference arrives as nothing)",
                fix="set url (e.g. nats://127.0.0.1:4222) here or on the iac.provider",
            )
        return url

    def _reach(self, obj: BrokerObject) -> str:
        """The URL to reach a stored object's broker (the provider's own when it matches)."""
        own = self.settings.url
        return own if own and wire.same_broker(own, obj.url) else obj.url

    config_class: ClassVar[type[Any]]  # the config message (StreamConfig, ConsumerConfig)

    def _decode(self, spec: ipb.ResourceSpec) -> tuple[BrokerObject, str, Any]:
        """(the object the spec names, its broker URL, the decoded config)."""
        where = f'{self.resource_type} "{spec.name}"'
        ours, url = wire.split_config(wire.load_json(spec.config_json, setting=where))
        cfg = decode(self.config_class, ours, setting=where)
        self._validate(spec.name, cfg)
        url = self._url(spec.name, url)
        return self._object(wire.public_url(url), cfg), url, cfg

    @abc.abstractmethod
    def _validate(self, name: str, cfg: Any) -> None: ...

    @abc.abstractmethod
    def _object(self, url: str, cfg: Any) -> BrokerObject: ...

    @abc.abstractmethod
    async def _ensure(self, provider: Provider, cfg: Any) -> None: ...

    @abc.abstractmethod
    async def _drift(self, admin: HasAdmin, cfg: Any) -> list[SettingDrift] | None: ...

    @abc.abstractmethod
    def _bare(self, obj: BrokerObject) -> Any:
        """A config naming only the object (for existence checks)."""

    @abc.abstractmethod
    async def _delete(self, admin: HasAdmin, obj: BrokerObject) -> bool: ...

    def _made(self, name: str, obj: BrokerObject) -> ipb.ResourceOutput:
        outputs: dict[str, Any] = {"url": obj.url, "stream": obj.stream}
        if obj.consumer:
            outputs["consumer"] = obj.consumer
        return self._output(name, obj.provider_id(), outputs)

    async def create(self, spec: ipb.ResourceSpec) -> ipb.ResourceOutput:
        obj, url, cfg = self._decode(spec)
        async with admin_for(url, self.settings) as (provider, _):
            await self._ensure(provider, cfg)
        return self._made(spec.name, obj)

    async def update(self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec) -> ipb.ResourceOutput:
        return await self.create(spec)  # ensure_* updates in place or reports a conflict

    async def read(self, ref: ipb.ResourceRef) -> ipb.ResourceOutput:
        obj = wire.parse_object_id(ref.provider_id, self.resource_type)
        async with admin_for(self._reach(obj), self.settings) as (_, admin):
            found = await self._drift(admin, self._bare(obj))
        if found is None:
            raise NotFoundError(f"{self.resource_type} {ref.name!r}: {obj.provider_id()} is gone")
        return self._made(ref.name, obj)

    async def delete(self, ref: ipb.ResourceRef) -> bool:
        obj = wire.parse_object_id(ref.provider_id, self.resource_type)
        async with admin_for(self._reach(obj), self.settings) as (_, admin):
            return await self._delete(admin, obj)

    async def diff(self, desired: ipb.ResourceSpec, current: ipb.ResourceOutput) -> ipb.DiffResult:
        obj, url, cfg = self._decode(desired)
        if current.provider_id:
            was = wire.parse_object_id(current.provider_id, self.resource_type)
            moved = [
                wire.replaced_change(path, old, new)
                for path, old, new in (
                    ("url", was.url, obj.url),
                    ("stream", was.stream, obj.stream),
                    ("consumer", was.consumer, obj.consumer),
                )
                if old != new
            ]
            if moved:
                return wire.diff_result(moved)
        try:
            async with admin_for(url, self.settings) as (_, admin):
                drifts = await self._drift(admin, cfg)
        except BrokerUnavailableError:
            # Nothing to compare with (e.g. its server is down and restarts earlier in
            # the same apply): apply ensures the object, which is a no-op if it matches.
            return wire.diff_result([wire.missing_change("reachable")])
        return wire.drift_diff(drifts, missing="exists")

    async def drift(
        self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec | None
    ) -> list[SettingDrift] | None:
        obj = wire.parse_object_id(ref.provider_id, self.resource_type)
        cfg = self._decode(spec)[2] if spec is not None else self._bare(obj)
        async with admin_for(self._reach(obj), self.settings) as (_, admin):
            drifts = await self._drift(admin, cfg)
        return drifts if spec is not None or drifts is None else []


class StreamDriver(BrokerDriver):
    resource_type = wire.STREAM_TYPE
    config_class = pb.StreamConfig

    def _validate(self, name: str, cfg: pb.StreamConfig) -> None:
        validate_stream(name, cfg)

    def _object(self, url: str, cfg: pb.StreamConfig) -> BrokerObject:
        return BrokerObject(url, cfg.name)

    async def _ensure(self, provider: Provider, cfg: pb.StreamConfig) -> None:
        await provider.ensure_stream(cfg)

    async def _drift(self, admin: HasAdmin, cfg: pb.StreamConfig) -> list[SettingDrift] | None:
        return await admin.stream_drift(cfg)

    def _bare(self, obj: BrokerObject) -> pb.StreamConfig:
        return pb.StreamConfig(name=obj.stream)

    async def _delete(self, admin: HasAdmin, obj: BrokerObject) -> bool:
        return await admin.delete_stream(obj.stream)


class ConsumerDriver(BrokerDriver):
    resource_type = wire.CONSUMER_TYPE
    config_class = pb.ConsumerConfig

    def _validate(self, name: str, cfg: pb.ConsumerConfig) -> None:
        validate_consumer(name, cfg, kind=self.resource_type)

    def _object(self, url: str, cfg: pb.ConsumerConfig) -> BrokerObject:
        return BrokerObject(url, cfg.stream_name, cfg.name)

    async def _ensure(self, provider: Provider, cfg: pb.ConsumerConfig) -> None:
        await provider.ensure_consumer(cfg)

    async def _drift(self, admin: HasAdmin, cfg: pb.ConsumerConfig) -> list[SettingDrift] | None:
        return await admin.consumer_drift(cfg)

    def _bare(self, obj: BrokerObject) -> pb.ConsumerConfig:
        return pb.ConsumerConfig(name=obj.consumer, stream_name=obj.stream)

    async def _delete(self, admin: HasAdmin, obj: BrokerObject) -> bool:
        return await admin.delete_consumer(obj.stream, obj.consumer)


# -- the self-hosted server -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path  # absolute
    port: int  # 0 = keep the recorded port, else any free one


_SERVER_KEYS = ("data_dir", "port")


class ServerDriver(Driver):
    resource_type = wire.SERVER_TYPE

    def _decode(self, spec: ipb.ResourceSpec) -> ServerConfig:
        where = f'{self.resource_type} "{spec.name}"'
        ours, url = wire.split_config(wire.load_json(spec.config_json, setting=where))
        unknown = sorted(set(ours) - set(_SERVER_KEYS)) + ([wire.URL_KEY] if url else [])
        if unknown:
            raise ConfigError(
                f"{where}.{unknown[0]}",
                "unknown key",
                fix=f"valid keys are: {', '.join(_SERVER_KEYS)}",
            )
        data_dir = ours.get("data_dir")
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            # The plugin runs in its own directory, not the config's: relative is ambiguous.
            raise ConfigError(
                f"{where}.data_dir",
                "must be an absolute path (where the server keeps its store, log and pid)",
                value=data_dir,
                fix="set data_dir, e.g. data_dir: ${HOME}/.local/state/eventbus/nats",
            )
        port = ours.get("port", 0)
        if isinstance(port, bool) or not isinstance(port, int | float) or not 0 <= port <= 65535:
            raise ConfigError(
                f"{where}.port",
                "must be a port number (0 = any free port)",
                value=port,
                fix="set port to a whole number from 0 to 65535, or leave it out for any free port",
            )
        return ServerConfig(server.absolute(Path(data_dir)), int(port))

    def _made(self, name: str, record: server.ServerRecord) -> ipb.ResourceOutput:
        return self._output(name, record.data_dir, record.outputs())

    async def create(self, spec: ipb.ResourceSpec) -> ipb.ResourceOutput:
        cfg = self._decode(spec)
        timeout = self.settings.connect_timeout
        return self._made(spec.name, await server.ensure_running(cfg.data_dir, cfg.port, timeout))

    async def update(self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec) -> ipb.ResourceOutput:
        return await self.create(spec)

    async def read(self, ref: ipb.ResourceRef) -> ipb.ResourceOutput:
        record = server.read_record(Path(ref.provider_id))
        if record is None or not server.is_serving(record):
            raise NotFoundError(
                f"{self.resource_type} {ref.name!r}: no server runs in {ref.provider_id}"
            )
        return self._made(ref.name, record)

    async def delete(self, ref: ipb.ResourceRef) -> bool:
        return await server.remove(Path(ref.provider_id), grace=self.settings.connect_timeout)

    async def diff(self, desired: ipb.ResourceSpec, current: ipb.ResourceOutput) -> ipb.DiffResult:
        cfg = self._decode(desired)
        if current.provider_id and Path(current.provider_id) != cfg.data_dir:
            change = wire.replaced_change("data_dir", current.provider_id, str(cfg.data_dir))
            return wire.diff_result([change])
        drifts = await self.drift(ipb.ResourceRef(provider_id=str(cfg.data_dir)), desired)
        return wire.drift_diff(drifts, missing="running")

    async def drift(
        self, ref: ipb.ResourceRef, spec: ipb.ResourceSpec | None
    ) -> list[SettingDrift] | None:
        record = server.read_record(Path(ref.provider_id))
        if record is None or not server.is_serving(record):
            return None
        want = self._decode(spec).port if spec is not None else 0
        if want and want != record.port:
            return [SettingDrift("port", str(record.port), str(want), immutable=False)]
        return []


DRIVERS: tuple[type[Driver], ...] = (ServerDriver, StreamDriver, ConsumerDriver)
