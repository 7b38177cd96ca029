"""Numbered up/down SQL migrations shipped in ``sql/``, applied under an advisory lock.

Files are named ``NNNN_name.up.sql`` / ``NNNN_name.down.sql``. Each runs in one
transaction with ``search_path`` set (transaction-locally) to the target
schema, and is recorded in ``<schema>.eventbus_schema_migrations``. A
transaction-level advisory lock keyed by the schema serialises concurrent
starters: the second one waits, then finds nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from ...core.errors import ConfigError
from .locks import MIGRATE_CLASS, crc_key

MIGRATIONS_TABLE = "eventbus_schema_migrations"
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.(up|down)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


def load_migrations() -> list[Migration]:
    """All shipped migrations, in version order (each must have an up and a down file)."""
    folder = resources.files(__package__ or __name__).joinpath("sql")
    found: dict[tuple[int, str], dict[str, str]] = {}
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            key = (int(match.group(1)), match.group(2))
            found.setdefault(key, {})[match.group(3)] = entry.read_text(encoding="utf-8")
    out = []
    for (version, name), texts in sorted(found.items()):
        if set(texts) != {"up", "down"}:
            raise RuntimeError(f"migration {version:04d}_{name} lacks its up or down file")
        out.append(Migration(version, name, texts["up"], texts["down"]))
    return out


def latest_version() -> int:
    return max((m.version for m in load_migrations()), default=0)


async def _prepare(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Take the lock, then make sure the schema and the bookkeeping table exist."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (MIGRATE_CLASS, crc_key(schema)))
    ident = sql.Identifier(schema)
    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    await conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " version INTEGER NOT NULL, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
            " CONSTRAINT eventbus_schema_migrations_pkey PRIMARY KEY (version))"
        ).format(sql.Identifier(schema, MIGRATIONS_TABLE))
    )
    await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))


async def _applied(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    cur = await conn.execute(
        sql.SQL("SELECT version FROM {} ORDER BY version").format(
            sql.Identifier(schema, MIGRATIONS_TABLE)
        )
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def applied_versions(conn: psycopg.AsyncConnection[Any], schema: str) -> list[int]:
    """Versions recorded in ``schema`` (empty when it was never migrated)."""
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, MIGRATIONS_TABLE).as_string(conn),),
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        return []
    return await _applied(conn, schema)


async def migrate_up(
    conn: psycopg.AsyncConnection[Any], schema: str, target: int | None = None
) -> list[int]:
    """Apply every migration not yet applied (up to ``target``); returns what ran."""
    ran: list[int] = []
    async with conn.transaction():
        await _prepare(conn, schema)
        done = set(await _applied(conn, schema))
        for mig in load_migrations():
            if mig.version in done or (target is not None and mig.version > target):
                continue
            await conn.execute(mig.up.encode())
            await conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                    sql.Identifier(schema, MIGRATIONS_TABLE)
                ),
                (mig.version, mig.name),
            )
            ran.append(mig.version)
    return ran


async def migrate_down(conn: psycopg.AsyncConnection[Any], schema: str, steps: int) -> list[int]:
    """Revert the ``steps`` most recent migrations; returns the versions reverted."""
    if steps < 1:
        raise ConfigError("--down", "must be 1 or more", value=steps, fix="pass --down 1")
    by_version = {m.version: m for m in load_migrations()}
    reverted: list[int] = []
    async with conn.transaction():
        await _prepare(conn, schema)
        for version in sorted(await _applied(conn, schema), reverse=True)[:steps]:
            await conn.execute(by_version[version].down.encode())
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE version = %s").format(
                    sql.Identifier(schema, MIGRATIONS_TABLE)
                ),
                (version,),
            )
            reverted.append(version)
    return reverted
