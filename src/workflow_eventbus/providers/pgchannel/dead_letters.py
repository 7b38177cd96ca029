"""Dead letters on pgchannel: the rows of the dead-letter stream in ``eventbus_events``.

The store runs its statements on the provider's pool (a :class:`Checkout` of
its :class:`Connections`) rather than on a connection of its own per query.
That is sound because each is one autocommit statement (a SELECT, or a DELETE
of one row) that leaves the connection idle, exactly like ``publish``; and it
gives the store the pool's health checks, the provider's error mapping and no
extra logins. ``close`` has nothing to release; closing the provider ends the
store's use.
"""

from __future__ import annotations

import json
from typing import Any

from ...core.deadletter import DEAD_LETTER_STREAM, DLQ_CONSUMER, DLQ_STREAM, DeadLetter
from ...core.defaults import DEFAULT_DEAD_LETTER_LIMIT
from ..base import DeadLetterStore
from . import queries as q
from .checkout import Checkout
from .connections import Connections


class PgDeadLetters(DeadLetterStore):
    """The letters of one dead-letter stream, oldest (lowest id) first."""

    def __init__(
        self, db: Connections, sql_of: q.Queries, dlq_stream: str = DEAD_LETTER_STREAM
    ) -> None:
        super().__init__(dlq_stream)
        self._db = db
        self._sql = sql_of

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_DEAD_LETTER_LIMIT
    ) -> list[DeadLetter]:
        params = {
            "dlq": self.dlq_stream,
            "stream": stream,
            "consumer": consumer,
            "hs": DLQ_STREAM,
            "hc": DLQ_CONSUMER,
            "limit": max(limit, 0),
        }
        async with Checkout(self._db, "list dead letters") as conn:
            cur = await conn.execute(self._sql(q.DEAD_LETTERS), params)
            rows = await cur.fetchall()
        return [self._letter(*row) for row in rows]

    def _letter(self, row_id: int, subject: str, raw: Any, payload: bytes) -> DeadLetter:
        headers = json.loads(raw) if isinstance(raw, str) else raw  # jsonb arrives decoded
        text = {str(k): str(v) for k, v in (headers or {}).items()}
        return DeadLetter.parse(self.dlq_stream, row_id, subject, text, bytes(payload))

    async def remove(self, letter: DeadLetter) -> None:
        async with Checkout(self._db, "remove a dead letter") as conn:
            await conn.execute(
                self._sql(q.REMOVE_DEAD_LETTER),
                {"dlq": letter.dlq_stream, "id": letter.dlq_sequence},
            )

    async def close(self) -> None:
        return None  # the pool is the provider's
