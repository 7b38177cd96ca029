"""EventBus: the registries of one engine (brokers, streams, consumers).

Nothing here is process-global: two EventBus objects in one process (two
engines, two tests) never see each other's modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._proto import eventbus_pb2 as pb
from ..core import capabilities
from ..core.config import decode
from ..core.errors import BrokerUnavailableError, ConfigError, NotFoundError
from ..core.names import BROKER, CONSUMER, MODULE_ALIASES, STREAM, canonical_module_type
from ..providers import REGISTRY
from ..providers.base import Provider
from .modules import BrokerModule, ConsumerModule, Module, StreamModule
from .telemetry import OFF, Telemetry

ProviderFactory = Callable[[pb.ClusterConfig, str, str], Provider]
BrokerStateListener = Callable[[str, bool], None]  # (broker module name, up)

log = logging.getLogger("workflow_eventbus.engine.bus")

# The module classes of the library; their config messages are in core.capabilities.
_MODULE_CLASSES: dict[str, type[Module]] = {
    BROKER: BrokerModule,
    STREAM: StreamModule,
    CONSUMER: ConsumerModule,
}


def load_provider(cfg: pb.ClusterConfig, url: str, broker_name: str) -> Provider:
    """Instantiate the runtime provider named by ``cfg.provider`` (imported lazily)."""
    return REGISTRY[cfg.provider].create(cfg, url, broker_name)


class EventBus:
    """Owns the modules of one engine and resolves ``broker_ref`` lookups."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        provider_factory: ProviderFactory | None = None,
        test_doubles: bool = False,
        telemetry: Telemetry = OFF,
    ) -> None:
        """``test_doubles`` lets broker modules use the in-process ``memory`` provider
        (tests only; the plugin never sets it unless WORKFLOW_EVENTBUS_TEST_DOUBLES=1)."""
        self.test_doubles = test_doubles
        self.telemetry = telemetry  # metrics and tracing hooks (engine/telemetry); OFF: none
        telemetry.attach(self)
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.make_provider: ProviderFactory = provider_factory or load_provider
        self.brokers: dict[str, BrokerModule] = {}
        self.streams: dict[str, StreamModule] = {}
        self.consumers: dict[str, ConsumerModule] = {}
        self.modules: list[Module] = []
        # Running trigger subscriptions: what they hold is theirs to settle.
        self.subscriptions: set[Any] = set()
        self._broker_listeners: list[BrokerStateListener] = []

    def create_module(self, type_name: str, name: str, config: Any) -> Module:
        """Build a module from a Mapping, Struct, JSON text or the typed message."""
        canonical = canonical_module_type(type_name)
        if canonical not in _MODULE_CLASSES:
            known = ", ".join([*_MODULE_CLASSES, *MODULE_ALIASES])
            raise ConfigError(
                "module type", "unknown module type", value=type_name, fix=f"use one of: {known}"
            )
        cls, message_cls = _MODULE_CLASSES[canonical], capabilities.MODULES[canonical].config
        if isinstance(config, message_cls):
            typed = config
        else:
            typed = decode(message_cls, config, setting=f'{canonical} "{name}"')
        module = cls(self, name, typed)  # type: ignore[call-arg]
        self.modules.append(module)
        return module

    def broker(self, ref: str = "") -> BrokerModule:
        """The broker named ``ref``; with no ref, the only registered broker."""
        if ref:
            found = self.brokers.get(ref)
            if found is None:
                raise NotFoundError(
                    f'eventbus.broker "{ref}" not registered; registered brokers: '
                    f"{self._broker_names()}; fix broker_ref or add the broker module"
                )
            return found
        if len(self.brokers) == 1:
            return next(iter(self.brokers.values()))
        if not self.brokers:
            raise NotFoundError(
                "no broker_ref given and no eventbus.broker module is registered; "
                "add an eventbus.broker module to the app config"
            )
        raise ConfigError(
            "broker_ref",
            f"is required when several brokers are registered ({self._broker_names()})",
            fix="set broker_ref to one of them",
        )

    def provider(self, ref: str = "") -> Provider:
        """The connected provider of a started broker (see :meth:`broker`)."""
        return self.broker(ref).provider

    async def ready(self, ref: str = "") -> Provider:
        """The provider for a step: starts the modules first if nobody did.

        ``wfctl pipeline run`` creates and initialises modules but never starts
        them; the first step that needs the broker starts every initialised
        module (brokers, then streams, then consumers), as engine Start would."""
        broker = self.broker(ref)
        if not broker.started:
            await self.start_all()
        return broker.provider

    async def start_all(self) -> None:
        """Start every initialised module that is not started yet, in dependency order."""
        for kind in (BrokerModule, StreamModule, ConsumerModule):
            for module in list(self.modules):
                if isinstance(module, kind) and module.initialized and not module.started:
                    await module.start()

    async def started_provider(self, ref: str, *, who: str) -> Provider:
        """Like :meth:`provider`, starting the broker module first if needed."""
        try:
            broker = self.broker(ref)
        except NotFoundError as exc:
            raise NotFoundError(f"{who}: {exc}") from exc
        await broker.start()
        try:
            return broker.provider
        except BrokerUnavailableError as exc:
            raise BrokerUnavailableError(f"{who}: {exc}") from exc

    def held_by_trigger(self, ack_token: str) -> bool:
        """True while a running trigger of this bus holds ``ack_token`` (its delivered,
        unsettled message: the trigger settles it when its pipeline ends)."""
        return any(sub.holds(ack_token) for sub in self.subscriptions)

    def stream_named(self, name: str) -> StreamModule | None:
        """The registered stream module whose stream is ``name`` (the first registered)."""
        return next((m for m in self.streams.values() if m.config.name == name), None)

    def consumer_named(self, durable: str) -> ConsumerModule | None:
        """The registered consumer module whose durable name is ``durable``.

        Deterministic when several share the name: the first registered wins."""
        return next((m for m in self.consumers.values() if m.config.name == durable), None)

    def consumer_config(self, durable: str) -> pb.ConsumerConfig | None:
        """Config of the consumer module whose durable name is ``durable``, or None."""
        module = self.consumer_named(durable)
        return module.config if module is not None else None

    def on_broker_state(self, listener: BrokerStateListener) -> Callable[[], None]:
        """Call ``listener(broker, up)`` at each connection change of a broker module:
        started (up), lost, restored, stopped (down, when it was up). Returns the
        function that removes it. Listeners run in the event loop and must not block."""
        self._broker_listeners.append(listener)

        def remove() -> None:
            if listener in self._broker_listeners:
                self._broker_listeners.remove(listener)

        return remove

    def broker_state_changed(self, broker: str, up: bool) -> None:
        """Called by a broker module: tells telemetry, then the listeners; never raises."""
        for hook in (self.telemetry.broker_state, *self._broker_listeners):
            try:
                hook(broker, up)
            except Exception:
                log.exception("broker %s: a connection state listener failed", broker)

    def brokers_down(self) -> list[str]:
        """The started brokers whose connection is lost now, by name. A broker that is
        not started, stopped, or running degraded without a URL is not in it."""
        return sorted(name for name, module in self.brokers.items() if module.link_up is False)

    def _broker_names(self) -> str:
        return "[" + ", ".join(sorted(self.brokers)) + "]"

    async def close(self) -> None:
        """Stop every module, newest first."""
        for module in reversed(self.modules):
            await module.stop()
        self.modules.clear()
