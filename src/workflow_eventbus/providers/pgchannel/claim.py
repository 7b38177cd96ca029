"""Claiming a batch for one durable consumer, in one transaction.

The transaction first takes the consumer's advisory lock (the Go plugin's key,
transaction-scoped here), so claims of one durable are serialised across
processes and a Go subscriber holding the same key excludes Python claimers.
It then: marks leases whose deliveries are exhausted, picks due redeliveries
(``FOR UPDATE SKIP LOCKED``: a row being settled right now is skipped) and
fresh events past the cursor, records one lease per message (the delivery
row), and moves the cursor and the ack floor. Ordered by sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...errors import NotFoundError
from ..base import CORRELATION_HEADER, LEGACY_CORRELATION_HEADER, Delivery
from . import queries as q
from .locks import consumer_lock_key
from .subjects import filter_regex

LOCK_WAIT = 2.0  # seconds; a Python claim takes milliseconds, a longer hold is a Go subscriber


@dataclass(slots=True)
class ConsumerState:
    position: int
    dispatched: int
    filter_subject: str
    max_deliver: int
    ack_policy: str
    ack_wait: float
    max_ack_pending: int
    backoff: list[float]
    max_age: int | None


@dataclass(slots=True)
class Claim:
    deliveries: list[Delivery]
    next_due: float | None  # seconds until the earliest lease ends, when nothing was due


async def claim(
    conn: psycopg.AsyncConnection[Any],
    sql_of: q.Queries,
    stream: str,
    consumer: str,
    limit: int,
    *,
    lock_wait: float = LOCK_WAIT,
) -> Claim:
    """Lease up to ``limit`` messages; an empty claim when another holder keeps the lock."""
    wait_ms = max(int(min(lock_wait, LOCK_WAIT) * 1000), 50)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{wait_ms}ms",))
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (consumer_lock_key(stream, consumer),)
            )
            return await _claim_locked(conn, sql_of, stream, consumer, limit)
    except psycopg.errors.LockNotAvailable:
        return Claim([], None)


async def _one(
    conn: psycopg.AsyncConnection[Any], query: Any, params: dict[str, Any]
) -> tuple[Any, ...] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def _ids(
    conn: psycopg.AsyncConnection[Any], query: Any, params: dict[str, Any], *, custom: bool = False
) -> list[int]:
    # custom=True: plan with the actual values every time. A cached generic plan of the
    # fresh-events scan (optional filter, moving cursor) was measured 50x slower.
    cur = await conn.execute(query, params, prepare=False if custom else None)
    return [int(row[0]) for row in await cur.fetchall()]


async def load_state(
    conn: psycopg.AsyncConnection[Any], sql_of: q.Queries, stream: str, consumer: str
) -> ConsumerState:
    row = await _one(conn, sql_of(q.CONSUMER_STATE), {"stream": stream, "consumer": consumer})
    if row is None:
        raise NotFoundError(
            f'pgchannel: consumer "{consumer}" not found on stream "{stream}"; '
            "declare it with an eventbus.consumer module (and start it) before fetching"
        )
    return ConsumerState(
        position=int(row[0]),
        dispatched=int(row[1]),
        filter_subject=str(row[2]),
        max_deliver=int(row[3]),
        ack_policy=str(row[4]),
        ack_wait=int(row[5]) / 1000.0,
        max_ack_pending=int(row[6]),
        backoff=[int(ms) / 1000.0 for ms in row[7] or []],
        max_age=None if row[8] is None else int(row[8]),
    )


async def _room(
    conn: psycopg.AsyncConnection[Any],
    sql_of: q.Queries,
    st: ConsumerState,
    base: dict[str, Any],
    limit: int,
) -> int:
    if st.max_ack_pending <= 0 or st.ack_policy == "none":
        return limit
    row = await _one(conn, sql_of(q.ACTIVE_LEASES), base)
    active = int(row[0]) if row else 0
    return min(limit, st.max_ack_pending - active)


async def _claim_locked(
    conn: psycopg.AsyncConnection[Any], sql_of: q.Queries, stream: str, consumer: str, limit: int
) -> Claim:
    st = await load_state(conn, sql_of, stream, consumer)
    base: dict[str, Any] = {
        "stream": stream,
        "consumer": consumer,
        "position": st.position,
        "max_deliver": st.max_deliver,
    }
    await conn.execute(sql_of(q.MARK_EXHAUSTED), base)
    room = await _room(conn, sql_of, st, base, limit)
    if room <= 0:
        return Claim([], await _next_due(conn, sql_of, base))
    due = await _ids(conn, sql_of(q.DUE_REDELIVERIES), {**base, "limit": room})
    top = await _one(conn, sql_of(q.STREAM_MAX_ID), base)
    stream_max = int(top[0]) if top else 0
    cursor = max(st.position, st.dispatched)
    fresh = await _ids(
        conn,
        sql_of(q.FRESH_EVENTS),
        {
            **base,
            "cursor": cursor,
            "limit": room,
            "max_age": st.max_age,
            "regex": filter_regex(st.filter_subject),
        },
        custom=True,
    )
    chosen = sorted(set(due) | set(fresh))[:room]
    taken = set(chosen)
    fresh_taken = [i for i in fresh if i in taken]
    new_cursor = max(fresh_taken, default=cursor)
    if len(fresh) < room and len(fresh_taken) == len(fresh):
        # Scanned to the end: events of this stream commit in id order (publishers
        # hold the stream row lock), so nothing at or below stream_max can still appear.
        new_cursor = max(new_cursor, stream_max)
    deliveries = await _deliver(conn, sql_of, st, base, chosen) if chosen else []
    row = await _one(conn, sql_of(q.ADVANCE), {**base, "cursor": new_cursor})
    new_position = int(row[0]) if row else st.position
    if new_position > st.position:
        await conn.execute(sql_of(q.FORGET_SETTLED), {**base, "position": new_position})
    if deliveries:
        return Claim(deliveries, None)
    return Claim([], await _next_due(conn, sql_of, {**base, "position": new_position}))


async def _deliver(
    conn: psycopg.AsyncConnection[Any],
    sql_of: q.Queries,
    st: ConsumerState,
    base: dict[str, Any],
    ids: list[int],
) -> list[Delivery]:
    cur = await conn.execute(
        sql_of(q.DELIVER),
        {
            **base,
            "ids": ids,
            "backoff": st.backoff,
            "ack_wait": st.ack_wait,
            "state": "acked" if st.ack_policy == "none" else "pending",
        },
    )
    return [to_delivery(base["stream"], base["consumer"], row) for row in await cur.fetchall()]


async def _next_due(
    conn: psycopg.AsyncConnection[Any], sql_of: q.Queries, base: dict[str, Any]
) -> float | None:
    row = await _one(conn, sql_of(q.NEXT_DUE), base)
    if row is None or row[0] is None:
        return None
    return max(float(row[0]), 0.0)


def to_delivery(stream: str, consumer: str, row: tuple[Any, ...]) -> Delivery:
    event_id, subject, headers, payload, correlation_id, ts, count = row
    out = {str(k): str(v) for k, v in (headers or {}).items()}
    if correlation_id:
        out[CORRELATION_HEADER] = correlation_id
        out[LEGACY_CORRELATION_HEADER] = correlation_id
    return Delivery(
        stream=stream,
        consumer=consumer,
        subject=subject,
        payload=bytes(payload),
        headers=out,
        sequence=int(event_id),
        published_at=ts,
        delivery_count=int(count),
        ack_token=f"{stream}:{consumer}:{event_id}:{count}",
    )
