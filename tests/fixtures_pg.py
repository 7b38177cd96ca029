"""PostgreSQL fixtures: one private server per session, a fresh one for outage tests.

``EVENTBUS_TEST_PG_DSN`` points the shared fixtures at an external server
instead (the tests then only create schemas in it, never databases).
Tests isolate themselves with a fresh schema (``pg_schema``), not a fresh DB.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest_asyncio
from psycopg import sql

from workflow_eventbus.devservers.postgres import PgServer

ENV_DSN = "EVENTBUS_TEST_PG_DSN"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_server() -> AsyncIterator[PgServer | None]:
    """The session's private server, or None when an external DSN is configured."""
    if os.environ.get(ENV_DSN):
        yield None
        return
    async with PgServer() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pg_dsn(pg_server: PgServer | None) -> str:
    return os.environ.get(ENV_DSN) or (pg_server.dsn if pg_server else "")


@pytest_asyncio.fixture(loop_scope="session")
async def pg_server_fresh() -> AsyncIterator[PgServer]:
    """A private server for tests that stop, kill or restart it."""
    async with PgServer() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty schema name in the shared database; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
