"""The connection state of one pgchannel provider, in one object.

:class:`Connections` owns the ``AsyncConnectionPool`` (``max_conns``
connections, autocommit), the pool's health check (:class:`RecentUseCheck`),
the one connection kept out of the pool between uses with its cursor and the
time it was last used, and whether the server answered lately. It opens and
closes them and maps psycopg and pool errors to the error hierarchy.
:class:`~.checkout.Checkout` is how a statement gets a connection from it;
the provider holds one ``Connections`` and nothing else of this state.

``healthy`` is what the provider reports as its connection state: it turns
False when a checkout or a statement fails because the server is unreachable
(no pooled connection within the operation timeout, or the connection broke)
and True again when the next statement completes. Statements come from the
traffic and from the retention sweep every few seconds, which therefore also
notices an outage and a recovery of a broker nobody uses. Each change, once
the pool is open, goes to ``on_state``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ...core.errors import BrokerUnavailableError, ProviderError, redact
from .health import RecentUseCheck


class Connections:
    """Pool, idle connection, health. Fields are read and written by ``Checkout``."""

    __slots__ = (
        "_healthy",
        "check",
        "dsn",
        "idle",
        "idle_at",
        "idle_cur",
        "max_size",
        "name",
        "on_state",
        "op_timeout",
        "pool",
        "where",
    )

    def __init__(
        self,
        dsn: str,
        *,
        where: str,
        max_size: int,
        op_timeout: float,
        name: str,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.where = where  # names the broker in error messages: eventbus.broker "bus"
        self.max_size = max_size
        self.op_timeout = op_timeout  # seconds a checkout waits for a pooled connection
        self.name = name
        self.pool: AsyncConnectionPool[Any] | None = None
        self.check = RecentUseCheck()
        self.idle: psycopg.AsyncConnection[Any] | None = None  # kept between uses
        self.idle_at = 0.0  # time.monotonic() when ``idle`` was last used
        self.idle_cur: psycopg.AsyncCursor[Any] | None = None  # a cursor of ``idle``
        self._healthy = False
        self.on_state = on_state  # told (up, reason) of each change of ``healthy``

    @property
    def healthy(self) -> bool:
        """Whether the server answered the last statement (see the module text)."""
        return self._healthy

    @healthy.setter
    def healthy(self, up: bool) -> None:
        # Set after every checkout: the common case is one comparison.
        if up is not self._healthy:
            self._change(up, "")

    def _change(self, up: bool, reason: str) -> None:
        self._healthy = up
        # Before open() and from close() there is no connection to lose or regain.
        if self.pool is not None and self.on_state is not None:
            self.on_state(up, reason)

    @property
    def connected(self) -> bool:
        return self.pool is not None and self._healthy

    async def open(self, timeout: float) -> None:
        """Open the pool, waiting at most ``timeout`` seconds for its first connection."""
        if self.pool is not None:
            return
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.max_size,
            open=False,
            kwargs={"autocommit": True},
            check=self.check,
            timeout=self.op_timeout,
            name=self.name,
        )
        try:
            await pool.open(wait=True, timeout=max(timeout, 0.1))
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise self.unavailable("connect", exc) from exc
        self.pool, self.healthy = pool, True

    async def close(self) -> None:
        """Return the idle connection and close the pool; idempotent."""
        pool, self.pool = self.pool, None
        idle, self.idle, self.idle_cur = self.idle, None, None
        if pool is not None:
            if idle is not None:
                await pool.putconn(idle)
            await pool.close()
        self.healthy = False

    def unavailable(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        """The server did not answer ``what``: marks the state unhealthy."""
        if self._healthy:
            self._change(False, f"{what}: {redact(str(exc)) or type(exc).__name__}")
        return BrokerUnavailableError(
            f"{self.where}: pgchannel {what} failed: PostgreSQL at {redact(self.dsn)} is "
            f"unreachable ({redact(str(exc)) or type(exc).__name__}); check dsn and that the "
            "server is running"
        )

    def failed(self, what: str, exc: BaseException) -> BaseException:
        """``exc`` from a checkout or its statements, as one of our errors (others unchanged)."""
        if isinstance(exc, (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError)):
            return self.unavailable(what, exc)
        if isinstance(exc, psycopg.Error):
            return ProviderError(f"{self.where}: pgchannel {what} failed: {exc}")
        return exc

    def not_connected(self) -> BrokerUnavailableError:
        return BrokerUnavailableError(
            f"{self.where}: pgchannel is not connected; start the broker module first"
        )
