"""Stream and consumer status on JetStream (the ``status`` capability).

The JetStream API's list calls (``STREAM.LIST``, ``CONSUMER.LIST.<stream>``)
are asked directly and their JSON read here, because nats-py's records drop
fields the command shows (a stream's ``last_ts``). Each call is a request/reply
on the provider's connection, paged by ``offset`` until ``total`` is reached.
Acknowledgements the provider has queued are written first, so the counts
include every settle made before the call.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors as js_errors

from ...core.errors import EventbusError
from ..base import ConsumerStatus, HasStatus, StreamStatus
from .errors import STREAM_NOT_FOUND, stream_missing

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext, JetStreamManager

    from .acks import AckConfirmer

_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time: the server's "none"


class NatsStatus(HasStatus):
    """``stream_status`` / ``consumer_status`` for :class:`~.provider.NatsProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        request_timeout: float
        _acks: AckConfirmer

        def _client(self, action: str) -> tuple[NatsClient, JetStreamContext, JetStreamManager]: ...

        def _fail(self, exc: BaseException, action: str) -> EventbusError: ...

    async def stream_status(self) -> list[StreamStatus]:
        pages = await self._list("STREAM.LIST", "streams", "list streams")
        return sorted((_stream(item) for item in pages), key=lambda s: s.name)

    async def consumer_status(self, stream: str) -> list[ConsumerStatus]:
        action = f'list consumers of stream "{stream}"'
        try:
            pages = await self._list(f"CONSUMER.LIST.{stream}", "consumers", action)
        except js_errors.NotFoundError as exc:
            raise stream_missing(stream, action) from exc
        return sorted((_consumer(stream, item) for item in pages), key=lambda c: c.name)

    async def _list(self, api: str, key: str, action: str) -> list[dict[str, Any]]:
        nc, js, _ = self._client(action)
        prefix = getattr(js, "_prefix", "$JS.API")
        request = _requester(nc, f"{prefix}.{api}", self.request_timeout)
        items: list[dict[str, Any]] = []
        try:
            await self._acks.write()
            while True:
                page = await request(json.dumps({"offset": len(items)}).encode())
                found = page.get(key) or []
                items.extend(found)
                if not found or len(items) >= int(page.get("total") or 0):
                    return items
        except js_errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                raise
            raise self._fail(exc, action) from exc
        except EventbusError:
            raise
        except Exception as exc:
            raise self._fail(exc, action) from exc


def _requester(
    nc: NatsClient, subject: str, timeout: float
) -> Callable[[bytes], Awaitable[dict[str, Any]]]:
    async def request(body: bytes) -> dict[str, Any]:
        try:
            reply = await nc.request(subject, body, timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise js_errors.ServiceUnavailableError() from exc
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            js_errors.APIError.from_error(answer["error"])  # raises the matching subclass
        return answer

    return request


def _stream(item: dict[str, Any]) -> StreamStatus:
    config, state = item.get("config") or {}, item.get("state") or {}
    return StreamStatus(
        name=str(config.get("name", "")),
        subjects=tuple(config.get("subjects") or ()),
        retention=str(config.get("retention") or "limits"),
        messages=int(state.get("messages") or 0),
        bytes=int(state.get("bytes") or 0),
        first_sequence=int(state.get("first_seq") or 0) if state.get("messages") else 0,
        last_sequence=int(state.get("last_seq") or 0),
        consumers=int(state.get("consumer_count") or 0),
        last_published=_time(state.get("last_ts")) if state.get("messages") else None,
    )


def _consumer(stream: str, item: dict[str, Any]) -> ConsumerStatus:
    config = item.get("config") or {}
    filters = [config["filter_subject"]] if config.get("filter_subject") else []
    filters += list(config.get("filter_subjects") or [])
    active = [
        moment
        for moment in (
            _time((item.get("delivered") or {}).get("last_active")),
            _time((item.get("ack_floor") or {}).get("last_active")),
        )
        if moment is not None
    ]
    return ConsumerStatus(
        stream=stream,
        name=str(item.get("name", "")),
        filter_subject=",".join(filters),
        pending=int(item.get("num_pending") or 0),
        ack_pending=int(item.get("num_ack_pending") or 0),
        redelivered=int(item.get("num_redelivered") or 0),
        last_active=max(active) if active else None,
    )


def _time(text: Any) -> datetime | None:
    """An RFC 3339 time of the server (nanoseconds allowed); None for none or Go's zero."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None if moment <= _NEVER else moment
