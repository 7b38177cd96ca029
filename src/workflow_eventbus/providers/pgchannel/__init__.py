"""pgchannel: the event bus on PostgreSQL alone (tables, row locks, LISTEN/NOTIFY).

The provider (and with it psycopg) is imported on first use of its names, so the
registry can load this package's config rules (``rules.py``) without it: every
``import workflow_eventbus`` does that, also for apps that never use pgchannel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .locks import consumer_lock_key
    from .provider import PgChannelProvider

__all__ = ["PgChannelProvider", "consumer_lock_key"]


def __getattr__(name: str) -> Any:
    if name == "PgChannelProvider":
        from .provider import PgChannelProvider

        return PgChannelProvider
    if name == "consumer_lock_key":
        from .locks import consumer_lock_key

        return consumer_lock_key
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
