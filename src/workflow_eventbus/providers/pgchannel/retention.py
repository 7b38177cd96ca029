"""Stream limits, enforced by a periodic sweep (one process at a time per schema).

PostgreSQL has no per-stream storage engine, so the limits are applied after
the fact: between two sweeps a stream can hold more than ``max_msgs`` /
``max_bytes`` (``max_age`` is also checked when fetching). ``max_bytes``
counts payload plus subject bytes, not headers or row overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from . import queries as q
from .locks import SWEEP_CLASS, crc_key


@dataclass(frozen=True, slots=True)
class _Limits:
    max_age: int | None
    max_msgs: int
    max_bytes: int
    retention: str


async def sweep(conn: psycopg.AsyncConnection[Any], sql_of: q.Queries) -> int:
    """Apply every stream's limits; returns the number of events deleted (0 if busy)."""
    deleted = 0
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)",
            (SWEEP_CLASS, crc_key(sql_of.schema)),
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return 0  # another process is sweeping this schema
        cur = await conn.execute(sql_of(q.LIMITED_STREAMS))
        for name, max_age, max_msgs, max_bytes, retention, window_ms in await cur.fetchall():
            limits = _Limits(max_age, max_msgs, max_bytes, retention)
            deleted += await _sweep_stream(conn, sql_of, name, limits)
            await conn.execute(
                sql_of(q.PURGE_MSG_IDS), {"stream": name, "window": int(window_ms) / 1000.0}
            )
    return deleted


async def _sweep_stream(
    conn: psycopg.AsyncConnection[Any],
    sql_of: q.Queries,
    stream: str,
    limits: _Limits,
) -> int:
    steps: list[tuple[Any, dict[str, Any]]] = []
    if limits.max_age and limits.max_age > 0:
        steps.append((q.PURGE_AGE, {"max_age": limits.max_age}))
    if limits.max_msgs > 0:
        steps.append((q.PURGE_COUNT, {"keep": limits.max_msgs}))
    if limits.max_bytes > 0:
        steps.append((q.PURGE_BYTES, {"max_bytes": limits.max_bytes}))
    if limits.retention in ("interest", "workqueue"):
        steps.append((q.PURGE_SETTLED, {}))
    deleted = 0
    for template, params in steps:
        cur = await conn.execute(sql_of(template), {"stream": stream, **params})
        deleted += max(cur.rowcount, 0)
    await conn.execute(sql_of(q.PURGE_ORPHAN_LEASES), {"stream": stream})
    return deleted
