"""Migrations: a Go-plugin database upgrades with no loss; CLI; concurrent starters."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.cli import migrate as cli
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.core.headers import LEGACY_CORRELATION_HEADER
from workflow_eventbus.providers.base import AckAction
from workflow_eventbus.providers.pgchannel import PgChannelProvider
from workflow_eventbus.providers.pgchannel.migrations import (
    applied_versions,
    latest_version,
    migrate_up,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres]

# The Go plugin's reference schema as its users created it by hand (our own text
# of it: default constraint names, unnamed indexes).
GO_SCHEMA = """
CREATE TABLE eventbus_streams (
  name TEXT PRIMARY KEY, subjects TEXT[] NOT NULL, max_age_seconds BIGINT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE TABLE eventbus_events (
  id BIGSERIAL PRIMARY KEY,
  stream_name TEXT NOT NULL REFERENCES eventbus_streams(name) ON DELETE RESTRICT,
  subject TEXT NOT NULL, headers JSONB NOT NULL DEFAULT '{}', payload BYTEA NOT NULL,
  correlation_id TEXT NULL, ts TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX ON eventbus_events (stream_name, id);
CREATE INDEX ON eventbus_events (subject);
CREATE TABLE eventbus_consumers (
  stream_name TEXT NOT NULL REFERENCES eventbus_streams(name) ON DELETE RESTRICT,
  name TEXT NOT NULL, position BIGINT NOT NULL DEFAULT 0, filter_subject TEXT NULL,
  ack_policy TEXT NOT NULL DEFAULT 'explicit', max_deliver INT NOT NULL DEFAULT 5,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (stream_name, name));
CREATE TABLE eventbus_event_deliveries (
  stream_name TEXT NOT NULL, consumer_name TEXT NOT NULL,
  event_id BIGINT NOT NULL REFERENCES eventbus_events(id) ON DELETE CASCADE,
  delivery_count INT NOT NULL DEFAULT 1,
  first_delivered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_delivered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (stream_name, consumer_name, event_id),
  FOREIGN KEY (stream_name, consumer_name)
    REFERENCES eventbus_consumers(stream_name, name) ON DELETE RESTRICT);
INSERT INTO eventbus_streams (name, subjects) VALUES ('ORDERS', '{orders.>}');
INSERT INTO eventbus_events (stream_name, subject, headers, payload, correlation_id) VALUES
  ('ORDERS', 'orders.created', '{"X-Tenant": "a"}', 'one', NULL),
  ('ORDERS', 'orders.created', '{}', 'two', NULL),
  ('ORDERS', 'orders.paid', '{"X-Tenant": "b"}', 'three', 'corr-3'),
  ('ORDERS', 'orders.shipped', '{}', 'four', NULL);
INSERT INTO eventbus_consumers (stream_name, name, position, filter_subject)
  VALUES ('ORDERS', 'shipper', 2, '');
INSERT INTO eventbus_event_deliveries (stream_name, consumer_name, event_id, delivery_count)
  VALUES ('ORDERS', 'shipper', 1, 1), ('ORDERS', 'shipper', 2, 1), ('ORDERS', 'shipper', 3, 2);
"""


async def _go_database(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ident = sql.Identifier(schema)
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        async with conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            await conn.execute(GO_SCHEMA.encode())


def _provider(dsn: str, schema: str, **kw: Any) -> PgChannelProvider:
    cluster = pb.ClusterConfig(
        provider="pgchannel", broker_target="in_process", dsn=dsn, schema=schema, **kw
    )
    return PgChannelProvider(cluster, dsn, broker_name="mig")


async def test_go_reference_database_migrates_forward_without_loss(
    pg_dsn: str, pg_schema: str
) -> None:
    await _go_database(pg_dsn, pg_schema)
    provider = _provider(pg_dsn, pg_schema)
    await provider.connect(10)
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            assert await applied_versions(conn, pg_schema) == [1, 2, 3]
            cur = await conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(pg_schema, "eventbus_events")
                )
            )
            assert (await cur.fetchone()) == (4,)
        # Position 2 survives: events 3 and 4 come next; 3 keeps its Go delivery count.
        got = await provider.fetch("ORDERS", "shipper", 10, 2.0)
        assert [(d.payload, d.delivery_count) for d in got] == [(b"three", 3), (b"four", 1)]
        assert got[0].headers["X-Tenant"] == "b"
        assert got[0].headers[LEGACY_CORRELATION_HEADER] == "corr-3"
        # The adopted consumer still works with the Go 3-part token shape.
        go_token = f"ORDERS:shipper:{got[0].sequence}"
        await provider.settle([go_token, got[1].ack_token], AckAction.ACK)
        assert await provider.pending("ORDERS", "shipper") == (0, 0)
        # New events continue the Go sequence.
        await provider.ensure_stream(pb.StreamConfig(name="ORDERS", subjects=["orders.>"]))
        from workflow_eventbus.providers.base import OutboundMessage

        res = await provider.publish(OutboundMessage("orders.created", b"five"))
        assert res.sequence == 5
        (five,) = await provider.fetch("ORDERS", "shipper", 10, 2.0)
        assert five.payload == b"five"
    finally:
        await provider.close()


async def test_concurrent_starters_migrate_once(pg_dsn: str, pg_schema: str) -> None:
    async def one() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            return await migrate_up(conn, pg_schema)

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert sorted(v for ran in results for v in ran) == list(range(1, latest_version() + 1))


async def test_auto_migrate_false_requires_a_migrated_schema(pg_dsn: str, pg_schema: str) -> None:
    provider = _provider(pg_dsn, pg_schema, auto_migrate=False)
    with pytest.raises(ConfigError, match="auto_migrate") as err:
        await provider.connect(10)
    assert "workflow-plugin-eventbus migrate" in str(err.value)
    await provider.close()
    cluster = pb.ClusterConfig(provider="pgchannel", schema=pg_schema)
    assert PgChannelProvider(cluster, pg_dsn, broker_name="x").auto_migrate is True


async def test_migrate_cli_up_status_down(
    pg_dsn: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def ns(**kw: Any) -> argparse.Namespace:
        base: dict[str, object] = {"dsn": pg_dsn, "schema": pg_schema, "down": 0, "status": False}
        return argparse.Namespace(**{**base, **kw})

    assert await asyncio.to_thread(cli.run, ns()) == 0
    assert "applied 0003" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.run, ns(down=2)) == 0
    out = capsys.readouterr().out
    assert "reverted 0003" in out and "reverted 0002" in out
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await applied_versions(conn, pg_schema) == [1]
    assert await asyncio.to_thread(cli.run, ns(status=True)) == 0
    assert f"schema {pg_schema}: at 1, latest {latest_version()}" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.run, ns(schema="Bad-Name")) == 2
    assert "--schema" in capsys.readouterr().err
    assert await asyncio.to_thread(cli.run, ns()) == 0
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await applied_versions(conn, pg_schema) == [1, 2, 3]
