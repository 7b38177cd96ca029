"""The pool's connection check, without a round trip for a connection used moments ago.

psycopg_pool's ``check_connection`` runs an empty query on every checkout:
one extra round trip per publish, fetch and settle (measured: pgchannel publish
at 0.36 of a raw INSERT, 0.49 without it). A connection that completed a
statement within ``FRESH`` seconds is handed out unchecked; older ones are
checked as before, so after a server restart at most the connections used in
that last moment fail once (BrokerUnavailableError) and are discarded.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from psycopg_pool import AsyncConnectionPool

FRESH = 1.0  # seconds


class RecentUseCheck:
    def __init__(self, fresh: float = FRESH) -> None:
        self.fresh = fresh
        self._last: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def used(self, conn: Any) -> None:
        """Record that ``conn`` just completed its work."""
        self._last[conn] = time.monotonic()

    def is_fresh(self, conn: Any) -> bool:
        """Used within ``fresh`` seconds and not known broken: safe to hand out unchecked."""
        last = self._last.get(conn)
        return last is not None and time.monotonic() - last < self.fresh and not conn.broken

    async def __call__(self, conn: Any) -> None:
        if not self.is_fresh(conn):
            await AsyncConnectionPool.check_connection(conn)
