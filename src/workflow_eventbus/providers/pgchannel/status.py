"""Stream and consumer status on pgchannel (the ``status`` capability).

Counts come from the tables as they are now: a stream's stored events (bytes
as the retention sweep measures them: payload plus subject), a consumer's
leases. Two differences from JetStream, both from what the tables keep: a
stream's ``last_sequence`` is its newest *stored* event id (ids are shared by
every stream of the schema, so a stream's numbers have gaps), and a
consumer's ``last_active`` is its newest delivery that still has a lease row
(an acknowledgement deletes the row, so a consumer that settled everything
shows none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.errors import NotFoundError
from ..base import ConsumerStatus, HasStatus, StreamStatus

if TYPE_CHECKING:
    from . import queries as q
    from .checkout import Checkout

STREAMS = """
SELECT s.name, s.subjects, s.retention, count(e.id),
       coalesce(sum(octet_length(e.payload) + octet_length(e.subject)), 0),
       coalesce(min(e.id), 0), coalesce(max(e.id), 0), max(e.ts),
       (SELECT count(*) FROM {consumers} c WHERE c.stream_name = s.name)
  FROM {streams} s LEFT JOIN {events} e ON e.stream_name = s.name
 GROUP BY s.name, s.subjects, s.retention
 ORDER BY s.name
"""

STREAM_EXISTS = "SELECT 1 FROM {streams} WHERE name = %(stream)s"

# Leases counted like PENDING counts them: pending, above the ack floor, not exhausted.
CONSUMERS = """
SELECT c.name, coalesce(c.filter_subject, ''),
       count(d.event_id) FILTER (WHERE d.state = 'pending' AND d.event_id > c.position
                                   AND d.delivery_count > 1
                                   AND (d.delivery_count < c.max_deliver
                                        OR d.lease_until > now())),
       max(d.last_delivered_at)
  FROM {consumers} c
  LEFT JOIN {deliveries} d ON d.stream_name = c.stream_name AND d.consumer_name = c.name
 WHERE c.stream_name = %(stream)s
 GROUP BY c.name, c.filter_subject
 ORDER BY c.name
"""


class PgStatus(HasStatus):
    """``stream_status`` / ``consumer_status`` for :class:`~.provider.PgChannelProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        sql: q.Queries

        def _conn(self, what: str) -> Checkout: ...

        async def pending(self, stream: str, consumer: str) -> tuple[int, int]: ...

    async def stream_status(self) -> list[StreamStatus]:
        async with self._conn("list streams") as conn:
            cur = await conn.execute(self.sql(STREAMS))
            rows = await cur.fetchall()
        return [
            StreamStatus(
                name=name,
                subjects=tuple(subjects),
                retention=retention,
                messages=int(messages),
                bytes=int(size),
                first_sequence=int(first),
                last_sequence=int(last),
                consumers=int(consumers),
                last_published=newest,
            )
            for name, subjects, retention, messages, size, first, last, newest, consumers in rows
        ]

    async def consumer_status(self, stream: str) -> list[ConsumerStatus]:
        async with self._conn("list consumers") as conn:
            cur = await conn.execute(self.sql(STREAM_EXISTS), {"stream": stream})
            if await cur.fetchone() is None:
                raise NotFoundError(
                    f'pgchannel: stream "{stream}" does not exist; declare an eventbus.stream '
                    f"with name {stream}, or pick one of the streams `status` lists"
                )
            cur = await conn.execute(self.sql(CONSUMERS), {"stream": stream})
            rows = await cur.fetchall()
        found = []
        for name, filter_subject, redelivered, last_active in rows:
            try:
                pending, ack_pending = await self.pending(stream, name)
            except NotFoundError:
                continue  # deleted since the listing
            found.append(
                ConsumerStatus(
                    stream=stream,
                    name=name,
                    filter_subject=filter_subject,
                    pending=pending,
                    ack_pending=ack_pending,
                    redelivered=int(redelivered),
                    last_active=last_active,
                )
            )
        return found
