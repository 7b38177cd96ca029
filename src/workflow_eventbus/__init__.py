"""Event bus for the GoCodeAlone workflow engine: NATS JetStream and PostgreSQL.

The names below are the library's stable surface (DESIGN.md "Library API");
everything else is reached through its layer's package (``core``, ``providers``,
``engine``, ``plugin``, ``devservers``, ``bench``, ``cli``) and may change.
"""

from ._version import __version__
from .core.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    EventbusError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    RequestError,
)
from .engine.bus import EventBus
from .engine.steps import create_step
from .engine.trigger import SubscribeTrigger, trigger_data
from .providers.base import AckAction, Delivery, OutboundMessage, PublishResult

__all__ = [
    "AckAction",
    "BrokerUnavailableError",
    "ConfigError",
    "ConflictError",
    "Delivery",
    "EventBus",
    "EventbusError",
    "NotFoundError",
    "OutboundMessage",
    "PayloadTooLargeError",
    "ProviderError",
    "PublishResult",
    "RequestError",
    "SubscribeTrigger",
    "__version__",
    "create_step",
    "trigger_data",
]
