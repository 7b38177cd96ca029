"""``migrate``: create or upgrade the pgchannel tables in a PostgreSQL schema.

Applies the numbered migrations shipped with the package (the same ones a
pgchannel broker applies at start unless ``auto_migrate: false``). Safe to run
from several places at once: an advisory lock serialises them. A database the
Go plugin already uses is upgraded in place, keeping its rows.

    workflow-plugin-eventbus migrate --dsn postgresql://app@db:5432/app
    workflow-plugin-eventbus migrate --dsn "$DSN" --schema eventbus --down 1
    workflow-plugin-eventbus migrate --dsn "$DSN" --status
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from typing import Any

import psycopg

from ..core.errors import ConfigError, EventbusError, redact
from ..providers.pgchannel.migrations import (
    applied_versions,
    latest_version,
    load_migrations,
    migrate_down,
    migrate_up,
)

ENV_DSN = "EVENTBUS_PG_DSN"
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "migrate",
        help="create or upgrade the pgchannel tables in PostgreSQL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dsn", default="", help=f"PostgreSQL connection string (default: ${ENV_DSN})"
    )
    parser.add_argument("--schema", default="public", help="schema of the tables (default public)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--down", type=int, default=0, metavar="N", help="revert the N most recent migrations"
    )
    action.add_argument("--status", action="store_true", help="show applied versions only")
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    try:
        for line in asyncio.run(_run(ns)):
            print(line)
    except EventbusError as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    return 0


def _settings(ns: argparse.Namespace) -> tuple[str, str]:
    dsn = ns.dsn or os.environ.get(ENV_DSN, "")
    if not dsn:
        raise ConfigError(
            "--dsn", "is required", fix=f"pass --dsn postgresql://... or set {ENV_DSN}"
        )
    schema = ns.schema or "public"
    if not _SCHEMA.fullmatch(schema):
        raise ConfigError(
            "--schema",
            "not a valid schema name",
            value=schema,
            fix="use lower-case letters, digits and _ (at most 63 characters)",
        )
    return dsn, schema


async def _run(ns: argparse.Namespace) -> list[str]:
    dsn, schema = _settings(ns)
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise EventbusError(
            f"--dsn: cannot connect to {redact(dsn)}: {redact(str(exc))}; check the DSN "
            "and that PostgreSQL is running"
        ) from exc
    names = {m.version: m.name for m in load_migrations()}
    async with conn:
        try:
            if ns.status:
                done = await applied_versions(conn, schema)
                lines = [f"{v:04d} {names.get(v, '?')} applied" for v in done]
                return [
                    *lines,
                    f"schema {schema}: at {max(done, default=0)}, latest {latest_version()}",
                ]
            if ns.down:
                undone = await migrate_down(conn, schema, ns.down)
                return [f"reverted {v:04d} {names[v]}" for v in undone] or ["nothing to revert"]
            ran = await migrate_up(conn, schema)
        except psycopg.Error as exc:
            raise EventbusError(
                f"migrate: schema {schema!r} failed: {exc}; check the user's rights on it"
            ) from exc
    lines = [f"applied {v:04d} {names[v]}" for v in ran]
    return [*lines, f"schema {schema} is at version {latest_version()}"]
