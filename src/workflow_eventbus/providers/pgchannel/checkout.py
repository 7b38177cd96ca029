"""One use of a pooled pgchannel connection: ``async with Checkout(connections, "what")``."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .connections import Connections


class Checkout:
    """One use of a connection of a :class:`Connections` (a class: cheaper per call
    than a generator).

    One connection is kept out of the pool between uses and handed out again
    while fresh: calls one after another skip the pool's checkout and return
    (about 20 us each), the common case of a single publisher. psycopg and pool
    errors, from the checkout or the body, become BrokerUnavailableError (server
    unreachable) or ProviderError.
    """

    __slots__ = ("_conn", "_cur", "_db", "_pool", "_what")

    def __init__(self, db: Connections, what: str) -> None:
        self._db = db
        self._what = what
        self._cur: psycopg.AsyncCursor[Any] | None = None

    def cursor(self) -> psycopg.AsyncCursor[Any]:
        """A cursor of this connection, kept with the idle connection for the next use
        (creating one per statement cost about 3% of a publish)."""
        if self._cur is None:
            self._cur = self._conn.cursor()
        return self._cur

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        db = self._db
        pool = db.pool
        if pool is None:
            raise db.not_connected()
        self._pool = pool
        conn, cur = db.idle, db.idle_cur
        db.idle = db.idle_cur = None
        try:
            if conn is not None and (
                time.monotonic() - db.idle_at >= db.check.fresh or conn.broken
            ):
                await pool.putconn(conn)
                conn = None
            if conn is not None:
                self._cur = cur
            if conn is None:
                conn = await pool.getconn(timeout=db.op_timeout)
        except Exception as exc:
            raise db.failed(self._what, exc) from exc
        self._conn = conn
        return conn

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        db, pool, conn = self._db, self._pool, self._conn
        try:
            if exc is None:
                if (
                    db.idle is None
                    and db.pool is pool
                    and conn.info.transaction_status == TransactionStatus.IDLE
                ):
                    db.idle, db.idle_at = conn, time.monotonic()
                    db.idle_cur = self._cur
                    db.healthy = True
                    return
                db.check.used(conn)
            await pool.putconn(conn)
        except Exception as failed:
            raise db.failed(self._what, failed) from failed
        if exc is None:
            db.healthy = True
            return
        mapped = db.failed(self._what, exc)
        if mapped is not exc:
            raise mapped from exc
