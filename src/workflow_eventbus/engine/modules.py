"""Module types: eventbus.broker, eventbus.stream, eventbus.consumer.

Lifecycle (every step idempotent, safe in any order): construction validates
the config; ``init`` registers the module with its EventBus (and, for a broker,
resolves the URL: config ``dsn``, then ``EVENTBUS_<NAME>_URI``, then
``NATS_URL``); ``start`` connects or ensures the broker resource; ``stop``
closes and unregisters. A stream or consumer whose broker (or stream) is
registered but not started yet starts it first, so module order in the app
config does not matter.

A started broker follows its provider's connection (``link_up``): a lost or
restored connection is logged (with ``extra`` fields: ``event`` is
``broker.lost`` or ``broker.restored``) and passed to the bus
(``ModuleHost.broker_state_changed``), which tells telemetry and its listeners.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from google.protobuf.message import Message

from .._proto import eventbus_pb2 as pb
from ..core.config import duration_seconds
from ..core.deadletter import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM
from ..core.defaults import DEFAULT_CONNECT_TIMEOUT
from ..core.errors import BrokerUnavailableError, ConfigError, redact
from ..core.names import BROKER, CONSUMER, STREAM
from ..core.validation import validate_consumer, validate_stream
from ..providers import REGISTRY, broker_url, url_sources, validate_cluster
from ..providers.base import Provider

log = logging.getLogger("workflow_eventbus.engine.modules")


class ModuleHost(Protocol):
    """What a module needs of the registry that owns it (the EventBus implements it);
    a protocol, so this file does not import the bus that imports it."""

    environ: Mapping[str, str]
    test_doubles: bool
    make_provider: Callable[[pb.ClusterConfig, str, str], Provider]
    brokers: dict[str, BrokerModule]
    streams: dict[str, StreamModule]
    consumers: dict[str, ConsumerModule]

    def stream_named(self, name: str) -> StreamModule | None: ...

    def broker_state_changed(self, broker: str, up: bool) -> None: ...

    async def started_provider(self, ref: str, *, who: str) -> Provider: ...


class Module(abc.ABC):
    type_name: ClassVar[str]
    config: Message

    def __init__(self, bus: ModuleHost, name: str) -> None:
        self.bus = bus
        self.name = name
        self.initialized = False
        self.started = False
        self._lock = asyncio.Lock()

    async def init(self) -> None:
        if not self.initialized:
            self._register()
            self.initialized = True

    async def start(self) -> None:
        async with self._lock:
            if self.started:
                return
            await self.init()
            await self._start()
            self.started = True

    async def stop(self) -> None:
        async with self._lock:
            try:
                if self.started:
                    await self._stop()
            finally:
                self.started = False
                if self.initialized:
                    self._unregister()
                    self.initialized = False

    @abc.abstractmethod
    def _registry(self) -> dict[str, Any]:
        """The EventBus registry this kind of module is listed in."""

    def _register(self) -> None:
        self._registry()[self.name] = self

    def _unregister(self) -> None:
        registry = self._registry()
        if registry.get(self.name) is self:
            del registry[self.name]

    @abc.abstractmethod
    async def _start(self) -> None: ...

    async def _stop(self) -> None:
        return None

    def __repr__(self) -> str:
        return f'{self.type_name} "{self.name}"'


class BrokerModule(Module):
    type_name = BROKER
    config: pb.ClusterConfig

    def __init__(self, bus: ModuleHost, name: str, config: pb.ClusterConfig) -> None:
        super().__init__(bus, name)
        validate_cluster(name, config, test_doubles=bus.test_doubles)
        self.config = config
        self.spec = REGISTRY[config.provider]
        self.url = ""
        self._provider: Provider | None = None
        # The provider's connection while started: True up, False lost; None when
        # there is no provider (not started, stopped, or degraded without a URL).
        self.link_up: bool | None = None

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            raise BrokerUnavailableError(self._not_running_text())
        return self._provider

    def _not_running_text(self) -> str:
        if not self.url:
            return (
                f"{self} (provider={self.spec.name}): runtime not initialized: no broker URL; "
                f"set {url_sources(self.name, self.spec.name)}"
            )
        return (
            f"{self} (provider={self.spec.name}): runtime not initialized; start the module first"
        )

    def _registry(self) -> dict[str, Any]:
        return self.bus.brokers

    def _register(self) -> None:
        self.url = self.config.dsn or broker_url(self.name, self.spec.name, self.bus.environ)
        super()._register()

    async def _start(self) -> None:
        self.spec.load()  # a declaration-only provider (kinesis) stops here, with why
        if not self.url:
            if self.spec.url_required:
                raise ConfigError(
                    f"{self}: dsn",
                    f"provider {self.spec.name} needs a broker URL and none is set",
                    fix=f"set {url_sources(self.name, self.spec.name)}",
                )
            log.warning("%s", self._not_running_text())
            return  # degraded: declared for IaC/plan flows, lookups explain why
        runtime = self.bus.make_provider(self.config, self.url, self.name)
        timeout = duration_seconds(self.config.connect_timeout) or DEFAULT_CONNECT_TIMEOUT
        await runtime.connect(timeout)
        self._provider = runtime
        runtime.state_listener = self._connection_changed
        self._set_link(True)

    def _connection_changed(self, up: bool, reason: str) -> None:
        """The provider's state listener: its connection was lost or came back."""
        if self._provider is None or up == self.link_up:
            return
        fields = {"broker": self.name, "provider": self.spec.name, "url": redact(self.url)}
        if up:
            log.info(
                "%s: connection to %s restored",
                self,
                fields["url"],
                extra={"event": "broker.restored", **fields},
            )
        else:
            log.warning(
                "%s: connection to %s lost (%s); its operations fail until the provider "
                "has reconnected, which it keeps trying",
                self,
                fields["url"],
                reason,
                extra={"event": "broker.lost", "reason": reason, **fields},
            )
        self._set_link(up)

    def _set_link(self, up: bool) -> None:
        self.link_up = up
        self.bus.broker_state_changed(self.name, up)

    async def _stop(self) -> None:
        runtime, self._provider = self._provider, None
        was_up, self.link_up = self.link_up, None
        if runtime is None:
            return
        runtime.state_listener = None  # closing is not a lost connection
        try:
            await runtime.close()
        finally:
            if was_up:
                self.bus.broker_state_changed(self.name, False)


class StreamModule(Module):
    type_name = STREAM
    config: pb.StreamConfig

    def __init__(self, bus: ModuleHost, name: str, config: pb.StreamConfig) -> None:
        super().__init__(bus, name)
        validate_stream(name, config)
        self.config = config

    def _registry(self) -> dict[str, Any]:
        return self.bus.streams

    async def _start(self) -> None:
        provider = await self.bus.started_provider(self.config.broker_ref, who=str(self))
        await provider.ensure_stream(self.config)


class ConsumerModule(Module):
    type_name = CONSUMER
    config: pb.ConsumerConfig

    def __init__(self, bus: ModuleHost, name: str, config: pb.ConsumerConfig) -> None:
        super().__init__(bus, name)
        validate_consumer(name, config)
        self.config = config

    def _registry(self) -> dict[str, Any]:
        return self.bus.consumers

    async def _start(self) -> None:
        stream = self.bus.stream_named(self.config.stream_name)
        if stream is not None:
            await stream.start()
        provider = await self.bus.started_provider(self.config.broker_ref, who=str(self))
        await declare_consumer(provider, self.config)


async def declare_consumer(provider: Provider, cfg: pb.ConsumerConfig) -> None:
    """Ensure the durable consumer ``cfg``; first the shared dead-letter stream when
    exhausted messages will go there (``max_deliver`` set, no own dead_letter_subject)."""
    if cfg.max_deliver > 0 and not cfg.dead_letter_subject:
        await provider.ensure_stream(
            pb.StreamConfig(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_PREFIX}.>"])
        )
    await provider.ensure_consumer(cfg)
