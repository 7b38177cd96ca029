"""Dead letters: read what the subscribe loop copied aside, and replay it.

The subscribe loop (:mod:`workflow_eventbus.engine.subscriber`) copies an exhausted
message to ``eventbus.deadletter.<stream>.<consumer>`` (captured by the shared
stream ``EVENTBUS_DEADLETTER``) or to a consumer's own ``dead_letter_subject``.
A :class:`DeadLetterStore` reads that stream without consuming it and removes
single entries; :func:`replay` republishes an entry to its original subject
through the broker's provider, and removes it only after the broker
acknowledged the republish (a crash in between replays it twice, never zero
times).

    store = await open_store(provider)
    letters = await store.list(stream="ORDERS", consumer="worker", limit=50)
    results = await replay(provider, store, letters)
"""

from __future__ import annotations

import abc
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from ..core.deadletter import (
    DEAD_LETTER_STREAM,
    DLQ_CONSUMER,
    DLQ_STREAM,
    DeadLetter,
    dead_letter_filter,
)
from ..core.errors import BrokerUnavailableError, ConfigError, EventbusError, NotFoundError, redact
from ..providers.base import OutboundMessage, Provider, PublishResult

DEFAULT_LIMIT = 100


class DeadLetterStore(abc.ABC):
    """Reads a dead-letter stream without consuming it; removes single entries."""

    def __init__(self, dlq_stream: str = DEAD_LETTER_STREAM) -> None:
        self.dlq_stream = dlq_stream

    @abc.abstractmethod
    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[DeadLetter]:
        """Oldest first, at most ``limit``, filtered by the source stream/consumer."""

    @abc.abstractmethod
    async def remove(self, letter: DeadLetter) -> None:
        """Delete the entry from the dead-letter stream (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(slots=True)
class ReplayResult:
    letter: DeadLetter
    published: PublishResult | None = None
    error: str = ""


async def replay(
    provider: Provider, store: DeadLetterStore, letters: list[DeadLetter]
) -> list[ReplayResult]:
    """Republish each letter to its original subject; remove it once the broker acked."""
    results = []
    for letter in letters:
        if not letter.subject:
            results.append(ReplayResult(letter, error="no original subject header; not replayed"))
            continue
        try:
            published = await provider.publish(
                OutboundMessage(letter.subject, letter.payload, letter.original_headers())
            )
            await store.remove(letter)
        except EventbusError as exc:
            results.append(ReplayResult(letter, error=str(exc)))
            continue
        results.append(ReplayResult(letter, published))
    return results


async def open_store(provider: Provider, dlq_stream: str = DEAD_LETTER_STREAM) -> DeadLetterStore:
    """The store matching ``provider`` (nats or pgchannel), connected."""
    if provider.name == "nats":
        nats_store = NatsDeadLetters(provider, dlq_stream)
        await nats_store.connect()
        return nats_store
    if provider.name == "pgchannel":
        return PgDeadLetters(provider, dlq_stream)
    raise ConfigError(
        "provider",
        "dead letters can be listed for nats and pgchannel brokers only",
        value=provider.name,
        fix="use a nats or pgchannel broker",
    )


class NatsDeadLetters(DeadLetterStore):
    """JetStream: direct reads by sequence, delete by sequence (own connection)."""

    def __init__(self, provider: Provider, dlq_stream: str = DEAD_LETTER_STREAM) -> None:
        super().__init__(dlq_stream)
        self.provider = provider
        self._nc: Any = None

    async def connect(self) -> None:
        import nats

        from ..providers.nats.options import auth_options

        try:
            self._nc = await nats.connect(
                servers=[self.provider.url],
                allow_reconnect=False,
                connect_timeout=5,
                max_reconnect_attempts=0,
                **auth_options(self.provider.cluster),
            )
        except Exception as exc:
            raise BrokerUnavailableError(
                f"dlq: cannot connect to NATS at {redact(self.provider.url)}: "
                f"{redact(str(exc)) or type(exc).__name__}; check the URL and credentials"
            ) from exc

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[DeadLetter]:
        import nats.js.errors as js_errors

        jsm = self._nc.jsm()
        try:
            info = await jsm.stream_info(self.dlq_stream)
        except js_errors.NotFoundError as exc:
            raise NotFoundError(
                f'dlq: stream "{self.dlq_stream}" does not exist: nothing was dead-lettered '
                "yet (it is created with the first consumer that sets max_deliver)"
            ) from exc
        seq, last = info.state.first_seq, info.state.last_seq
        subject = (
            dead_letter_filter(stream, consumer) if self.dlq_stream == DEAD_LETTER_STREAM else None
        )
        out: list[DeadLetter] = []
        while seq and seq <= last and len(out) < limit:
            try:
                raw = await jsm.get_msg(self.dlq_stream, seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                break
            letter = DeadLetter.parse(
                self.dlq_stream, raw.seq, raw.subject, dict(raw.headers or {}), raw.data or b""
            )
            if letter.matches(stream, consumer):
                out.append(letter)
            seq = raw.seq + 1
        return out

    async def remove(self, letter: DeadLetter) -> None:
        import nats.js.errors as js_errors

        with contextlib.suppress(js_errors.NotFoundError):
            await self._nc.jsm().delete_msg(letter.dlq_stream, letter.dlq_sequence)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()


class PgDeadLetters(DeadLetterStore):
    """pgchannel: rows of ``eventbus_events`` in the dead-letter stream."""

    def __init__(self, provider: Provider, dlq_stream: str = DEAD_LETTER_STREAM) -> None:
        super().__init__(dlq_stream)
        self.provider = provider
        self.schema: str = getattr(provider, "schema", "") or provider.cluster.schema or "public"

    async def _execute(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        import psycopg
        from psycopg import sql

        text = sql.SQL(query).format(table=sql.Identifier(self.schema, "eventbus_events"))
        try:
            async with await psycopg.AsyncConnection.connect(
                self.provider.url, autocommit=True, connect_timeout=5
            ) as conn:
                cur = await conn.execute(text, params)
                return list(await cur.fetchall()) if cur.description else []
        except psycopg.OperationalError as exc:
            raise BrokerUnavailableError(
                f"dlq: PostgreSQL at {redact(self.provider.url)} is unreachable: "
                f"{redact(str(exc))}; check the DSN"
            ) from exc
        except psycopg.Error as exc:
            raise EventbusError(f"dlq: query on schema {self.schema!r} failed: {exc}") from exc

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_LIMIT
    ) -> list[DeadLetter]:
        rows = await self._execute(
            "SELECT id, subject, headers, payload FROM {table} "
            "WHERE stream_name = %(dlq)s "
            "AND (%(stream)s = '' OR headers->>%(hs)s = %(stream)s) "
            "AND (%(consumer)s = '' OR headers->>%(hc)s = %(consumer)s) "
            "ORDER BY id LIMIT %(limit)s",
            {
                "dlq": self.dlq_stream,
                "stream": stream,
                "consumer": consumer,
                "hs": DLQ_STREAM,
                "hc": DLQ_CONSUMER,
                "limit": max(limit, 0),
            },
        )
        out = []
        for row_id, subject, raw_headers, payload in rows:
            headers = json.loads(raw_headers) if isinstance(raw_headers, str) else raw_headers
            text_headers = {str(k): str(v) for k, v in (headers or {}).items()}
            out.append(
                DeadLetter.parse(self.dlq_stream, row_id, subject, text_headers, bytes(payload))
            )
        return out

    async def remove(self, letter: DeadLetter) -> None:
        await self._execute(
            "DELETE FROM {table} WHERE stream_name = %(dlq)s AND id = %(id)s",
            {"dlq": letter.dlq_stream, "id": letter.dlq_sequence},
        )

    async def close(self) -> None:
        return None
