"""The pgchannel provider: streams and durable consumers in PostgreSQL tables.

Connections come from one ``AsyncConnectionPool`` of ``max_conns`` (default
16), held with the rest of the connection state by one :class:`Connections`;
every checkout is health-checked, so after a server restart dead
connections are replaced and work resumes. While the server is unreachable
operations raise :class:`BrokerUnavailableError` and the provider reports its
connection down (``report_state``; what counts is in connections.py). Polling
(``poll_interval``, default 1 s) is the correctness path; NOTIFY only wakes
waiting fetches early.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds, parse_duration
from ...core.deadletter import DEAD_LETTER_STREAM
from ...core.defaults import (
    DEFAULT_PG_MAX_CONNS,
    DEFAULT_PG_OPERATION_TIMEOUT,
    DEFAULT_PG_POLL_INTERVAL,
    DEFAULT_PG_SCHEMA,
)
from ...core.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    RequestError,
)
from ...core.headers import MSG_ID_HEADER
from ...core.names import BROKER, STREAM
from ...core.subjects import patterns_overlap, subject_matches, validate_subject
from ..base import (
    AckAction,
    Delivery,
    Feature,
    HasDeadLetters,
    HasPending,
    OutboundMessage,
    Provider,
    PublishResult,
    batch_size,
)
from . import mapping as m
from . import queries as q
from .admin import PgAdmin
from .checkout import Checkout
from .claim import claim
from .connections import Connections
from .dead_letters import PgDeadLetters
from .ephemeral import PgEphemeral
from .listener import Notifier, channel_name
from .locks import publish_lock_key
from .migrations import applied_versions, latest_version, migrate_up
from .retention import sweep
from .rules import validate_pg_stream_name
from .status import PgStatus
from .subjects import filter_regex

STREAM_CACHE_TTL = 5.0
ROUTE_CACHE_SIZE = 4096


@dataclass(slots=True)
class _StreamInfo:
    name: str
    subjects: list[str]
    max_msg_size: int
    lock_key: int
    channel: str


class PgChannelProvider(Provider, HasPending, HasDeadLetters, PgStatus, PgEphemeral, PgAdmin):
    name = "pgchannel"
    features = frozenset(
        {
            Feature.RESTART,
            Feature.DEDUP,
            Feature.NAK_DELAY,
            Feature.PERSISTENT,
            Feature.DEAD_LETTERS,
            Feature.PENDING,
            Feature.STATUS,
            Feature.EPHEMERAL_CONSUMERS,
            Feature.ADMIN,
        }
    )
    sweep_interval = 5.0

    def __init__(self, cluster: pb.ClusterConfig, url: str, *, broker_name: str) -> None:
        super().__init__(cluster, url or cluster.dsn, broker_name=broker_name)
        self._where = f'{BROKER} "{broker_name}"'
        self.schema = cluster.schema or DEFAULT_PG_SCHEMA
        self.poll_interval = self._poll_interval(cluster)
        self.max_conns = cluster.max_conns if cluster.max_conns > 0 else DEFAULT_PG_MAX_CONNS
        self.auto_migrate = cluster.auto_migrate if cluster.HasField("auto_migrate") else True
        timeout = duration_seconds(cluster.connect_timeout)
        self.op_timeout = timeout if timeout > 0 else DEFAULT_PG_OPERATION_TIMEOUT
        self.sql = q.Queries(self.schema)
        self._db = Connections(
            self.url,
            where=self._where,
            max_size=self.max_conns,
            op_timeout=self.op_timeout,
            name=f"eventbus-{broker_name}",
            on_state=self.report_state,
        )
        self._notifier: Notifier | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._streams: dict[str, _StreamInfo] = {}
        self._streams_loaded = 0.0
        self._routes: dict[str, _StreamInfo] = {}  # valid subject -> its stream, see _stream_for

    def _poll_interval(self, cluster: pb.ClusterConfig) -> float:
        if not cluster.poll_interval:
            return DEFAULT_PG_POLL_INTERVAL
        seconds = parse_duration(cluster.poll_interval, setting=f"{self._where}: poll_interval")
        return seconds if seconds > 0 else DEFAULT_PG_POLL_INTERVAL

    # ---- lifecycle ----

    async def connect(self, timeout: float) -> None:
        if self._db.pool is not None:
            return
        if not self.url:
            raise ConfigError(
                f"{self._where}: dsn",
                "is required for pgchannel",
                fix="set dsn: postgresql://user@host:5432/dbname",
            )
        await self._prepare_schema(timeout)
        await self._db.open(timeout)
        self._notifier = Notifier(self.url, self.log, self.poll_interval)
        self._notifier.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="pgchannel-retention")

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            await notifier.stop()
        await self._db.close()

    @property
    def connected(self) -> bool:
        return self._db.connected

    async def _prepare_schema(self, timeout: float) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(int(timeout), 1)
            )
        except psycopg.Error as exc:
            raise self._db.unavailable("connect", exc) from exc
        async with conn:
            try:
                if self.auto_migrate:
                    ran = await migrate_up(conn, self.schema)
                    if ran:
                        self.log.info(
                            "pgchannel: applied migrations %s to schema %s", ran, self.schema
                        )
                    return
                applied = await applied_versions(conn, self.schema)
            except psycopg.Error as exc:
                raise ProviderError(
                    f"{self._where}: migrating schema {self.schema!r} failed: {exc}; check that "
                    "the DSN's user may create tables there, or migrate with "
                    "`workflow-plugin-eventbus migrate`"
                ) from exc
        if max(applied, default=0) < latest_version():
            raise ConfigError(
                f"{self._where}: auto_migrate",
                f"schema {self.schema!r} is at version {max(applied, default=0)}, "
                f"this release needs {latest_version()}",
                value=False,
                fix=f"run `workflow-plugin-eventbus migrate --dsn <dsn> --schema {self.schema}` "
                "or set auto_migrate: true",
            )

    def _conn(self, what: str) -> Checkout:
        """``async with self._conn("publish") as conn``: a pooled connection, errors mapped."""
        return Checkout(self._db, what)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.enforce_limits()
            except (BrokerUnavailableError, ProviderError) as exc:
                self.log.debug("pgchannel retention sweep skipped: %s", exc)

    async def enforce_limits(self) -> int:
        """Apply max_age / max_msgs / max_bytes / interest / workqueue now."""
        async with self._conn("retention sweep") as conn:
            return await sweep(conn, self.sql)

    # ---- streams and consumers ----

    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        row = m.stream_row(cfg)
        async with self._conn("ensure_stream") as conn, conn.transaction():
            await self._check_overlap(conn, cfg)
            cur = await conn.execute(self.sql(q.STREAM_RETENTION), {"name": cfg.name})
            current = await cur.fetchone()
            if current is not None and current[0] != row["retention"]:
                raise ConflictError(
                    f'{STREAM} "{cfg.name}": retention_policy is {current[0]!r} on the broker, '
                    f"config says {row['retention']!r}; it cannot change: use a new stream name"
                )
            await conn.execute(self.sql(q.UPSERT_STREAM), row)
        self._streams_loaded = 0.0  # reload on next publish

    async def _check_overlap(
        self, conn: psycopg.AsyncConnection[Any], cfg: pb.StreamConfig
    ) -> None:
        cur = await conn.execute(self.sql(q.OTHER_STREAM_SUBJECTS), {"name": cfg.name})
        for other, subjects in await cur.fetchall():
            for mine in cfg.subjects:
                clash = next((s for s in subjects if patterns_overlap(mine, s)), None)
                if clash is not None:
                    raise ConflictError(
                        f'{STREAM} "{cfg.name}": subjects: "{mine}" overlaps "{clash}" of '
                        f'stream "{other}"; give each stream subjects no other stream captures'
                    )

    async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None:
        row = m.consumer_row(cfg)
        async with self._conn("ensure_consumer") as conn:
            for _ in range(2):  # a concurrent creator may win the insert
                cur = await conn.execute(self.sql(q.GET_CONSUMER), row)
                existing = await cur.fetchone()
                if existing is not None:
                    self._check_immutable(cfg, existing, row)
                    await conn.execute(self.sql(q.UPDATE_CONSUMER), row)
                    return
                start = await self._start_position(conn, cfg, row)
                try:
                    cur = await conn.execute(self.sql(q.INSERT_CONSUMER), {**row, "start": start})
                except psycopg.errors.ForeignKeyViolation as exc:
                    raise NotFoundError(
                        f'eventbus.consumer "{cfg.name}": stream_name: stream "{cfg.stream_name}" '
                        "not found; declare it with an eventbus.stream module started before "
                        "the consumer"
                    ) from exc
                if cur.rowcount == 1:
                    return

    @staticmethod
    def _check_immutable(
        cfg: pb.ConsumerConfig, existing: tuple[Any, ...], row: dict[str, Any]
    ) -> None:
        diffs = m.immutable_differences(existing, row)
        if diffs:
            raise ConflictError(
                f'eventbus.consumer "{cfg.name}" on stream "{cfg.stream_name}": '
                + "; ".join(diffs)
                + ". These cannot change on an existing durable: use a new consumer name"
            )

    async def _start_position(
        self, conn: psycopg.AsyncConnection[Any], cfg: pb.ConsumerConfig, row: dict[str, Any]
    ) -> int:
        policy = row["deliver_policy"]
        params: dict[str, Any] = {"stream": cfg.stream_name}
        if policy == "new":
            template = q.START_LAST_ID
        elif policy == "last":
            template, params["regex"] = q.START_LAST_MATCH, filter_regex(cfg.filter_subject)
        elif policy == "by_start_time":
            template, params["time"] = q.START_BY_TIME, row["opt_start_time"]
        elif policy == "by_start_sequence":
            return max(int(row["opt_start_seq"] or 1) - 1, 0)
        else:
            return 0
        cur = await conn.execute(self.sql(template), params)
        found = await cur.fetchone()
        return int(found[0]) if found else 0

    # ---- publish ----

    async def _stream_for(self, subject: str, setting: str = "subject") -> _StreamInfo:
        """The stream capturing ``subject``; remembered per subject until streams reload."""
        if not self._streams_fresh():
            await self._load_streams()
        found = self._routes.get(subject)
        if found is not None:
            return found
        validate_subject(subject, setting=setting, wildcards=False)
        found = self._match_stream(subject)
        if found is None and time.monotonic() - self._streams_loaded > 0.05:
            await self._load_streams()  # created by another process since the last load?
            found = self._match_stream(subject)
        if found is None:
            raise NotFoundError(
                f'pgchannel: no stream captures subject "{subject}"; add it (or a wildcard such '
                'as "orders.>") to the subjects of an eventbus.stream'
            )
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[subject] = found
        return found

    def _streams_fresh(self) -> bool:
        return time.monotonic() - self._streams_loaded <= STREAM_CACHE_TTL

    def _match_stream(self, subject: str) -> _StreamInfo | None:
        for info in self._streams.values():
            if any(subject_matches(p, subject) for p in info.subjects):
                return info
        return None

    async def _load_streams(self) -> None:
        async with self._conn("load streams") as conn:
            cur = await conn.execute(self.sql(q.LIST_STREAMS))
            rows = await cur.fetchall()
        self._streams = {
            n: _StreamInfo(n, list(s), int(size), publish_lock_key(self.schema, n), channel_name(n))
            for n, s, size in rows
        }
        self._routes = {}
        self._streams_loaded = time.monotonic()

    def _check_message(self, msg: OutboundMessage, info: _StreamInfo) -> None:
        if 0 <= info.max_msg_size < len(msg.payload):
            raise PayloadTooLargeError(
                "payload",
                f'larger than max_msg_size {info.max_msg_size} of stream "{info.name}"',
                value=f"{len(msg.payload)} bytes",
                fix="send a smaller payload or raise the stream's max_msg_size",
            )

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        info = self._routes.get(msg.subject) if self._streams_fresh() else None
        if info is None:
            info = await self._stream_for(msg.subject)
        self._check_message(msg, info)
        params = self._publish_params(msg, info)
        checkout = self._conn("publish")
        async with checkout as conn:
            if msg.msg_id:
                result = await self._publish_dedup(conn, params)
            else:
                cur = await checkout.cursor().execute(self.sql(q.PUBLISH), params)
                result = _published(info.name, await cur.fetchone())
        if self._notifier is not None:
            self._notifier.wake(info.channel)
        return result

    def _publish_params(self, msg: OutboundMessage, info: _StreamInfo) -> dict[str, Any]:
        headers = dict(msg.headers)
        if msg.msg_id:
            headers[MSG_ID_HEADER] = msg.msg_id
        return {
            "stream": info.name,
            "lock_key": info.lock_key,
            "subject": msg.subject,
            "headers": Jsonb(headers) if headers else None,  # NULL: stored as '{}'
            "payload": bytes(msg.payload),
            "corr": msg.correlation_id or None,
            "msg_id": msg.msg_id or None,
            "channel": info.channel,
        }

    def _stream_gone(self, stream: str) -> NotFoundError:
        self._streams_loaded = 0.0
        return NotFoundError(f'pgchannel: stream "{stream}" no longer exists; declare it again')

    async def _publish_dedup(
        self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any]
    ) -> PublishResult:
        async with conn.transaction():
            cur = await conn.execute(self.sql(q.LOCK_STREAM), params)
            row = await cur.fetchone()
            if row is None:
                raise self._stream_gone(params["stream"])
            cur = await conn.execute(
                self.sql(q.CLAIM_MSG_ID), {**params, "window": row[0] / 1000.0}
            )
            if await cur.fetchone() is None:
                cur = await conn.execute(self.sql(q.ORIGINAL_OF_MSG_ID), params)
                orig = await cur.fetchone()
                seq, at = (int(orig[0] or 0), orig[1]) if orig else (0, datetime.now().astimezone())
                return PublishResult(params["stream"], seq, at, duplicate=True)
            cur = await conn.execute(self.sql(q.PUBLISH), params)
            result = _published(params["stream"], await cur.fetchone())
            await conn.execute(self.sql(q.SET_MSG_ID_EVENT), {**params, "id": result.sequence})
            return result

    async def publish_many(
        self, msgs: Sequence[OutboundMessage]
    ) -> list[PublishResult | Exception]:
        """One transaction per stream for messages without msg_id; the rest one by one."""
        results: list[PublishResult | Exception | None] = [None] * len(msgs)
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for i, msg in enumerate(msgs):
            try:
                if msg.msg_id:
                    continue
                info = await self._stream_for(msg.subject, f"messages[{i}].subject")
                self._check_message(msg, info)
                groups.setdefault(info.name, []).append((i, self._publish_params(msg, info)))
            except (ConfigError, NotFoundError, BrokerUnavailableError) as exc:
                results[i] = exc
        for stream, items in groups.items():
            await self._publish_group(stream, items, results)
        for i, msg in enumerate(msgs):
            if results[i] is None:
                try:
                    results[i] = await self.publish(msg)
                except (
                    RequestError,
                    ConfigError,
                    NotFoundError,
                    BrokerUnavailableError,
                    ProviderError,
                ) as exc:
                    results[i] = exc
        return [r if r is not None else ProviderError("not published") for r in results]

    async def _publish_group(
        self,
        stream: str,
        items: list[tuple[int, dict[str, Any]]],
        results: list[PublishResult | Exception | None],
    ) -> None:
        try:
            async with self._conn("publish") as conn, conn.transaction(), conn.cursor() as cur:
                # Pipelined: one round trip for the batch, one transaction.
                await cur.executemany(
                    self.sql(q.PUBLISH), [params for _, params in items], returning=True
                )
                for i, _ in items:
                    results[i] = _published(stream, await cur.fetchone())
                    cur.nextset()
        except (BrokerUnavailableError, ProviderError, NotFoundError) as exc:
            for i, _ in items:
                results[i] = exc
            return
        self._wake(stream)

    # ---- consume ----

    def _wake(self, stream: str) -> None:
        if self._notifier is not None:
            self._notifier.wake(channel_name(stream))

    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        validate_pg_stream_name(stream, setting="stream")
        limit = batch_size(batch)
        deadline = time.monotonic() + max(max_wait, 0.0)
        channel = channel_name(stream)
        while True:
            waker = self._notifier.event(channel) if self._notifier else asyncio.Event()
            lock_wait = deadline - time.monotonic()
            async with self._conn("fetch") as conn:
                got = await claim(conn, self.sql, stream, consumer, limit, lock_wait=lock_wait)
            remaining = deadline - time.monotonic()
            if got.deliveries or remaining <= 0:
                return got.deliveries
            wait = min(remaining, self.poll_interval)
            if got.next_due is not None:
                wait = min(wait, got.next_due + 0.005)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waker.wait(), max(wait, 0.005))

    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        groups: dict[tuple[str, str], tuple[list[int], list[int | None]]] = {}
        for token in tokens:
            stream, consumer, seq, gen = m.parse_token(token)
            ids, gens = groups.setdefault((stream, consumer), ([], []))
            ids.append(seq)
            gens.append(gen)
        for (stream, consumer), (ids, gens) in groups.items():
            params: dict[str, Any] = {
                "stream": stream,
                "consumer": consumer,
                "ids": ids,
                "gens": gens,
                "channel": channel_name(stream),
                "delay": max(delay or 0.0, 0.0),
            }
            await self._settle_group(params, action)

    async def _settle_group(self, params: dict[str, Any], action: AckAction) -> None:
        stream, consumer = params["stream"], params["consumer"]
        if action in (AckAction.ACK, AckAction.TERM):
            template = q.ACK if action == AckAction.ACK else q.TERM
            params["is_ack"] = action == AckAction.ACK
        else:
            template = q.NAK if action == AckAction.NAK else q.IN_PROGRESS
        async with self._conn("settle") as conn:
            cur = await conn.execute(self.sql(template), params)
            row = await cur.fetchone()
            if row is not None and int(row[0]) == 0:
                await self._require_consumer(conn, stream, consumer)
        if action == AckAction.NAK:
            self._wake(stream)

    async def _require_consumer(
        self, conn: psycopg.AsyncConnection[Any], stream: str, consumer: str
    ) -> None:
        cur = await conn.execute(
            self.sql(q.CONSUMER_EXISTS), {"stream": stream, "consumer": consumer}
        )
        if await cur.fetchone() is None:
            raise NotFoundError(
                f'pgchannel: ack_token names consumer "{consumer}" on stream "{stream}", which '
                "does not exist; pass a token this broker delivered"
            )

    async def pending(self, stream: str, consumer: str) -> tuple[int, int]:
        async with self._conn("pending") as conn:
            cur = await conn.execute(
                self.sql(q.PENDING), {"stream": stream, "consumer": consumer, "regex": ""}
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(
                    f'pgchannel: consumer "{consumer}" not found on stream "{stream}"'
                )
            if row[2]:
                cur = await conn.execute(
                    self.sql(q.PENDING),
                    {
                        "stream": stream,
                        "consumer": consumer,
                        "regex": filter_regex(row[2]),
                    },
                )
                row = await cur.fetchone() or row
        return int(row[0]), int(row[1])

    async def dead_letters(self, dlq_stream: str = DEAD_LETTER_STREAM) -> PgDeadLetters:
        """A store over ``dlq_stream`` on this provider's pool (see dead_letters.py)."""
        if self._db.pool is None:
            raise self._db.not_connected()
        return PgDeadLetters(self._db, self.sql, dlq_stream)


def _published(stream: str, row: tuple[Any, ...] | None) -> PublishResult:
    """The result of PUBLISH, which inserts exactly one row (it reads no stream row)."""
    assert row is not None, "PUBLISH returned no row"
    return PublishResult(stream, int(row[0]), row[1])
