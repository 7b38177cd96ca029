"""pgchannel scenarios against raw psycopg on the same private PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .._proto import eventbus_pb2 as pb
from ..devservers.postgres import PgServer
from ..engine.bus import EventBus
from ..providers.base import AckAction, OutboundMessage, Provider
from .core import PAYLOAD, Outcome, Sample, Scenario, timed
from .runner import Group, Settings, run_groups

STREAM, SUBJECT, CONSUMER = "bench_pg", "benchpg.orders", "bench-pg-c"
BATCH = 100
FILL_CHUNK = 500

RAW_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS bench_raw;
CREATE TABLE IF NOT EXISTS bench_raw.events (
    id         BIGSERIAL   PRIMARY KEY,
    subject    TEXT        NOT NULL,
    headers    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    payload    BYTEA       NOT NULL,
    ts         TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_at TIMESTAMPTZ NULL
);
CREATE INDEX IF NOT EXISTS events_unclaimed_idx ON bench_raw.events (id) WHERE claimed_at IS NULL;
"""
RAW_INSERT = """
WITH ins AS (INSERT INTO bench_raw.events (subject, headers, payload)
             VALUES (%s, %s, %s) RETURNING id)
SELECT id, pg_notify('bench_raw', id::text) FROM ins
"""
RAW_CLAIM = """
UPDATE bench_raw.events SET claimed_at = now()
WHERE id IN (SELECT id FROM bench_raw.events WHERE claimed_at IS NULL
             ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, subject, headers, payload
"""


class PgPaths:
    def __init__(self, dsn: str, provider: Provider, conn: psycopg.AsyncConnection[Any]) -> None:
        self.dsn = dsn
        self.provider = provider
        self.conn = conn

    async def raw_insert_notify(self, limit: int, seconds: float) -> Sample:
        """One row per commit: INSERT ... RETURNING id plus pg_notify, autocommit."""
        conn = self.conn
        headers = Jsonb({})

        async def one() -> int:
            cur = await conn.execute(RAW_INSERT, (SUBJECT, headers, PAYLOAD))
            await cur.fetchone()
            return 1

        return await timed(limit, seconds, one)

    async def pgchannel_publish(self, limit: int, seconds: float) -> Sample:
        provider = self.provider

        async def one() -> int:
            await provider.publish(OutboundMessage(SUBJECT, PAYLOAD))
            return 1

        return await timed(limit, seconds, one)

    async def raw_claim(self, limit: int, seconds: float) -> Sample:
        """SKIP LOCKED claim of 100 rows per statement (one commit per batch)."""
        conn = self.conn
        await conn.execute("TRUNCATE bench_raw.events")
        async with conn.cursor() as cur:
            rows = [(SUBJECT, Jsonb({}), PAYLOAD)] * limit
            await cur.executemany(
                "INSERT INTO bench_raw.events (subject, headers, payload) VALUES (%s, %s, %s)", rows
            )

        async def claim() -> int:
            cur = await conn.execute(RAW_CLAIM, (BATCH,))
            return len(await cur.fetchall())

        return await timed(limit, seconds, claim, stop_when_empty=True)

    async def pgchannel_consume_ack(self, limit: int, seconds: float) -> Sample:
        """Provider.fetch(100) then settle(ACK) of the 100 tokens."""
        provider = self.provider
        for start in range(0, limit, FILL_CHUNK):
            msgs = [OutboundMessage(SUBJECT, PAYLOAD)] * min(FILL_CHUNK, limit - start)
            await provider.publish_many(msgs)

        async def batch() -> int:
            got = await provider.fetch(STREAM, CONSUMER, BATCH, 1.0)
            if got:
                await provider.settle([d.ack_token for d in got], AckAction.ACK)
            return len(got)

        return await timed(limit, seconds, batch, stop_when_empty=True)


def pg_groups(paths: PgPaths) -> list[Group]:
    return [
        Group(
            "pg_publish",
            [
                Scenario("pg_raw.insert+notify", paths.raw_insert_notify, 5000, latency="message"),
                Scenario(
                    "pgchannel.publish",
                    paths.pgchannel_publish,
                    5000,
                    "pg_raw.insert+notify",
                    0.8,
                    latency="message",
                ),
            ],
        ),
        Group(
            "pg_consume_batch",
            [
                Scenario("pg_raw.skip_locked_claim100", paths.raw_claim, 20000, latency="batch"),
                Scenario(
                    "pgchannel.consume100+ack",
                    paths.pgchannel_consume_ack,
                    20000,
                    "pg_raw.skip_locked_claim100",
                    0.3,
                    latency="batch",
                ),
            ],
        ),
    ]


async def pg_run(
    settings: Settings, select: Callable[[list[Group], Sequence[str]], list[Group]]
) -> list[Outcome]:
    """Start a private PostgreSQL, set up the pgchannel bus and the raw table, run the rows."""
    async with PgServer() as server:
        bus = EventBus(environ={})
        try:
            cluster = pb.ClusterConfig(
                provider="pgchannel", broker_target="in_process", dsn=server.dsn, schema="bench"
            )
            for module in (
                bus.create_module("eventbus.broker", "pg", cluster),
                bus.create_module(
                    "eventbus.stream", STREAM, pb.StreamConfig(name=STREAM, subjects=["benchpg.>"])
                ),
                bus.create_module(
                    "eventbus.consumer",
                    CONSUMER,
                    pb.ConsumerConfig(name=CONSUMER, stream_name=STREAM, max_ack_pending=20000),
                ),
            ):
                await module.init()
                await module.start()
            async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
                await conn.execute(RAW_SCHEMA)
                paths = PgPaths(server.dsn, bus.provider(), conn)
                return await run_groups(select(pg_groups(paths), settings.only), settings)
        finally:
            await bus.close()
