"""NATS JetStream provider: see :class:`NatsProvider` and docs/nats.md."""

from .provider import NatsProvider

__all__ = ["NatsProvider"]
