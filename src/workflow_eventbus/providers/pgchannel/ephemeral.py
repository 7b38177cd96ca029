"""Ephemeral consumers on pgchannel (the capability ``tail`` reads through).

An ephemeral consumer is an ordinary consumer row whose name is
``eventbus_ephemeral_`` and 16 hex digits; it is read with ``fetch`` and
``settle`` like any durable. PostgreSQL cannot expire a row by itself, so
liveness is the row's ``updated_at``: the reader refreshes it
(``keep_ephemeral``), and every ``create_ephemeral`` first deletes the
ephemeral consumers of the schema (with their leases) that were not refreshed
for longer than its own ``idle``. A reader that was killed therefore leaves
its row until the next one starts; while it is there it holds back the
retention of an interest stream like any consumer that stopped reading.

Deleting takes the consumer's advisory lock (the one a claim holds), so no
claim is half-way through writing leases for the consumer being removed.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from ..._proto import eventbus_pb2 as pb
from ...core.errors import ConfigError, NotFoundError
from ...core.names import EPHEMERAL_PREFIX
from ..base import HasEphemeralConsumers
from .locks import consumer_lock_key
from .subjects import filter_regex

if TYPE_CHECKING:
    from . import queries as q
    from .checkout import Checkout

NAME_PATTERN = "^" + EPHEMERAL_PREFIX + "[0-9a-f]{16}$"

RETENTION = "SELECT retention FROM {streams} WHERE name = %(stream)s"

# The N-th newest stored event of the stream that the filter matches.
NTH_NEWEST = """
SELECT id FROM {events}
 WHERE stream_name = %(stream)s AND (%(regex)s = '' OR subject ~ %(regex)s)
 ORDER BY id DESC OFFSET %(skip)s LIMIT 1
"""

STALE = """
SELECT stream_name, name FROM {consumers}
 WHERE name ~ %(pattern)s AND updated_at < now() - make_interval(secs => %(idle)s::float8)
"""

LOCK_CONSUMER = "SELECT pg_advisory_xact_lock(%(key)s)"
DELETE_LEASES = (
    "DELETE FROM {deliveries} WHERE stream_name = %(stream)s AND consumer_name = %(name)s"
)
DELETE_CONSUMER = "DELETE FROM {consumers} WHERE stream_name = %(stream)s AND name = %(name)s"
TOUCH = (
    "UPDATE {consumers} SET updated_at = now() WHERE stream_name = %(stream)s AND name = %(name)s"
)


class PgEphemeral(HasEphemeralConsumers):
    """Ephemeral consumers for :class:`~.provider.PgChannelProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        sql: q.Queries

        def _conn(self, what: str) -> Checkout: ...

        async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None: ...

    async def create_ephemeral(
        self,
        stream: str,
        filter_subject: str,
        *,
        idle: float,
        from_start: bool = False,
        last: int = 0,
    ) -> str:
        cfg = pb.ConsumerConfig(
            name=EPHEMERAL_PREFIX + secrets.token_hex(8),
            stream_name=stream,
            filter_subject=filter_subject,
            deliver_policy=pb.DELIVER_POLICY_NEW,
        )
        async with self._conn("create an ephemeral consumer") as conn:
            cur = await conn.execute(self.sql(RETENTION), {"stream": stream})
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(
                    f'pgchannel: stream "{stream}" does not exist; name a stream `status` '
                    "lists, or subjects one of them captures"
                )
            if row[0] == "workqueue":
                raise ConfigError(
                    f'stream "{stream}"',
                    "is a work-queue stream: a reader would take its messages from its consumers",
                    fix="read a limits or interest stream, or the work queue's dead letters",
                )
            cur = await conn.execute(self.sql(STALE), {"pattern": NAME_PATTERN, "idle": idle})
            stale = await cur.fetchall()
            if from_start:
                cfg.deliver_policy = pb.DELIVER_POLICY_ALL
            elif last > 0:
                params = {"stream": stream, "regex": filter_regex(filter_subject), "skip": last - 1}
                cur = await conn.execute(self.sql(NTH_NEWEST), params)
                start = await cur.fetchone()
                if start is None:  # fewer than `last` stored: all of them
                    cfg.deliver_policy = pb.DELIVER_POLICY_ALL
                else:
                    cfg.deliver_policy = pb.DELIVER_POLICY_BY_START_SEQUENCE
                    cfg.opt_start_seq = int(start[0])
        for old_stream, old_name in stale:
            await self.delete_ephemeral(old_stream, old_name)
        await self.ensure_consumer(cfg)
        return cfg.name

    async def keep_ephemeral(self, stream: str, name: str) -> None:
        async with self._conn("keep an ephemeral consumer") as conn:
            await conn.execute(self.sql(TOUCH), {"stream": stream, "name": name})

    async def delete_ephemeral(self, stream: str, name: str) -> None:
        params = {"stream": stream, "name": name, "key": consumer_lock_key(stream, name)}
        async with self._conn("delete an ephemeral consumer") as conn, conn.transaction():
            await conn.execute(self.sql(LOCK_CONSUMER), params)
            await conn.execute(self.sql(DELETE_LEASES), params)
            await conn.execute(self.sql(DELETE_CONSUMER), params)
