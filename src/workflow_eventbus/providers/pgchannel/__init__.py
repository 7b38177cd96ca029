"""pgchannel: the event bus on PostgreSQL alone (tables, row locks, LISTEN/NOTIFY)."""

from .locks import consumer_lock_key
from .provider import PgChannelProvider

__all__ = ["PgChannelProvider", "consumer_lock_key"]
