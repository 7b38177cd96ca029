"""Claiming a batch for one durable consumer, in one transaction of three round trips.

The transaction first takes the consumer's advisory lock (the Go plugin's key,
transaction-scoped here), so claims of one durable are serialised across
processes and a Go subscriber holding the same key excludes Python claimers.
It then: marks leases whose deliveries are exhausted, picks due redeliveries
(``FOR UPDATE SKIP LOCKED``: a row being settled right now is skipped) and
fresh events past the cursor, records one lease per message (the delivery
row), and moves the cursor and the ack floor. Ordered by sequence.

The statements go out in pipeline mode: BEGIN, the lock and the state read in
one round trip; the exhausted-mark and the pick in the second; the leases, the
cursor move and COMMIT in the third.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

from ...core.errors import NotFoundError
from ...core.headers import CORRELATION_HEADER, LEGACY_CORRELATION_HEADER
from ..base import Delivery
from . import queries as q
from .locks import consumer_lock_key
from .mapping import UNLIMITED_DELIVER
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
    active: int
    stream_max: int


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
        try:
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(
                    sql_of(q.CLAIM_LOCK),
                    {"lock_timeout": f"{wait_ms}ms", "key": consumer_lock_key(stream, consumer)},
                )
                return await _claim_locked(conn, sql_of, stream, consumer, limit)
        finally:
            if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                await conn.execute("ROLLBACK")
    except psycopg.errors.LockNotAvailable:
        return Claim([], None)


async def load_state(
    conn: psycopg.AsyncConnection[Any], sql_of: q.Queries, stream: str, consumer: str
) -> ConsumerState:
    cur = await conn.execute(sql_of(q.CONSUMER_STATE), {"stream": stream, "consumer": consumer})
    row = await cur.fetchone()
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
        active=int(row[9]),
        stream_max=int(row[10]),
    )


def _room(st: ConsumerState, limit: int) -> int:
    if st.max_ack_pending <= 0 or st.ack_policy == "none":
        return limit
    return min(limit, st.max_ack_pending - st.active)


async def _finish(
    conn: psycopg.AsyncConnection[Any],
    sql_of: q.Queries,
    base: dict[str, Any],
    cursor: int,
    deliver: psycopg.AsyncCursor[Any] | None,
) -> tuple[list[tuple[Any, ...]], float | None]:
    """Queue the cursor move (and NEXT_DUE when nothing is delivered), COMMIT, then read."""
    await conn.execute(sql_of(q.ADVANCE), {**base, "cursor": cursor})
    due = None if deliver is not None else await conn.execute(sql_of(q.NEXT_DUE), base)
    await conn.execute("COMMIT")
    rows = await deliver.fetchall() if deliver is not None else []
    if due is None:
        return rows, None
    found = await due.fetchone()
    return rows, None if found is None or found[0] is None else max(float(found[0]), 0.0)


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
    cursor = max(st.position, st.dispatched)
    room = _room(st, limit)
    if room <= 0:
        _, next_due = await _finish(conn, sql_of, base, cursor, None)
        return Claim([], next_due)
    if 0 < st.max_deliver < UNLIMITED_DELIVER:
        await conn.execute(sql_of(q.MARK_EXHAUSTED), base)
    optional = bool(st.filter_subject) or (st.max_age or 0) > 0
    cur = await conn.execute(
        sql_of(q.PICK_FILTERED if optional else q.PICK),
        {
            **base,
            "cursor": cursor,
            "limit": room,
            "max_age": st.max_age,
            "regex": filter_regex(st.filter_subject),
        },
        prepare=False if optional else None,
    )
    picked = await cur.fetchall()
    due = [int(i) for i, is_due in picked if is_due]
    fresh = [int(i) for i, is_due in picked if not is_due]
    chosen = sorted(set(due) | set(fresh))[:room]
    taken = set(chosen)
    fresh_taken = [i for i in fresh if i in taken]
    new_cursor = max(fresh_taken, default=cursor)
    if len(fresh) < room and len(fresh_taken) == len(fresh):
        # Scanned to the end: events of this stream commit in id order (publishers
        # hold the stream's publish lock), so nothing at or below stream_max can still appear.
        new_cursor = max(new_cursor, st.stream_max)
    deliver = None
    if chosen:
        deliver = await conn.execute(
            sql_of(q.DELIVER),
            {
                **base,
                "due": [i for i in due if i in taken],
                "fresh": fresh_taken,
                "backoff": st.backoff,
                "ack_wait": st.ack_wait,
                "state": "acked" if st.ack_policy == "none" else "pending",
            },
        )
    rows, next_due = await _finish(conn, sql_of, base, new_cursor, deliver)
    if rows:
        return Claim([to_delivery(stream, consumer, row) for row in rows], None)
    return Claim([], next_due)


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
