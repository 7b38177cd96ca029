"""kafka: the event bus on Apache Kafka (topics, consumer groups, offsets).

The provider (and with it the Kafka client library) is imported on first use of
its names, so the registry can load this package's config rules (``rules.py``)
without it: every ``import workflow_eventbus`` does that, also for apps that
never use Kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .provider import KafkaProvider

__all__ = ["KafkaProvider"]


def __getattr__(name: str) -> Any:
    if name == "KafkaProvider":
        from .provider import KafkaProvider

        return KafkaProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
