"""Ephemeral consumers on JetStream (the capability ``tail`` reads through).

An ephemeral consumer here is a named JetStream pull consumer without a durable
name and with ``inactive_threshold``: the server deletes it by itself once no
pull reached it for that long, so a reader that was killed leaves nothing
behind for longer than ``idle``. ``delete_ephemeral`` removes it at once.

JetStream has no "the last N messages" start. For ``last`` the start sequence
is searched: a consumer's ``num_pending`` right after creation is the number of
matching messages from its start sequence on, which falls as the start rises,
so a binary search over the stream's sequences with short-lived probe
consumers finds the sequence of the N-th newest matching message (one probe
when the newest N sequences all match, about log2(stream length) otherwise).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.js.errors as js_errors
from nats.js import api

from ...core.errors import ConfigError, EventbusError
from ...core.names import EPHEMERAL_PREFIX
from ..base import HasEphemeralConsumers
from .errors import STREAM_NOT_FOUND, stream_missing

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext, JetStreamManager

PROBE_IDLE = 5.0  # seconds: a probe left behind by a crash goes this soon


def ephemeral_name() -> str:
    return EPHEMERAL_PREFIX + secrets.token_hex(8)


class NatsEphemeral(HasEphemeralConsumers):
    """Ephemeral consumers for :class:`~.provider.NatsProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        broker_name: str

        def _client(self, action: str) -> tuple[NatsClient, JetStreamContext, JetStreamManager]: ...

        def _fail(self, exc: BaseException, action: str) -> EventbusError: ...

        async def _drop_pull(self, stream: str, consumer: str) -> None: ...

    async def create_ephemeral(
        self,
        stream: str,
        filter_subject: str,
        *,
        idle: float,
        from_start: bool = False,
        last: int = 0,
    ) -> str:
        action = f'create an ephemeral consumer on stream "{stream}"'
        _, _, jsm = self._client(action)
        info = await self._stream_info(jsm, stream, action)
        if info.config.retention == api.RetentionPolicy.WORK_QUEUE:  # str or the enum
            raise ConfigError(
                f'stream "{stream}"',
                "is a work-queue stream: a reader would take its messages from its consumers",
                fix="read a limits or interest stream, or the work queue's dead letters",
            )
        spec = _Spec(jsm, stream, filter_subject, idle, action)
        if not from_start and last <= 0:
            name, _ = await self._create(spec, api.DeliverPolicy.NEW)
            return name
        name, matching = await self._create(spec, api.DeliverPolicy.ALL)
        if from_start or matching <= last:
            return name
        await self.delete_ephemeral(stream, name)
        start = await self._nth_newest(spec, last, info.state.first_seq, info.state.last_seq)
        name, _ = await self._create(spec, api.DeliverPolicy.BY_START_SEQUENCE, start)
        return name

    async def keep_ephemeral(self, stream: str, name: str) -> None:
        return None  # every pull request counts as activity for inactive_threshold

    async def delete_ephemeral(self, stream: str, name: str) -> None:
        action = f'delete ephemeral consumer "{name}" of stream "{stream}"'
        await self._drop_pull(stream, name)
        _, _, jsm = self._client(action)
        try:
            await jsm.delete_consumer(stream, name)
        except js_errors.NotFoundError:
            return  # gone already (expired, or the stream was deleted)
        except Exception as exc:
            raise self._fail(exc, action) from exc

    async def _stream_info(self, jsm: JetStreamManager, stream: str, action: str) -> api.StreamInfo:
        try:
            return await jsm.stream_info(stream)
        except js_errors.NotFoundError as exc:
            if exc.err_code in (STREAM_NOT_FOUND, None):
                raise stream_missing(stream, action) from exc
            raise self._fail(exc, action) from exc
        except Exception as exc:
            raise self._fail(exc, action) from exc

    async def _create(
        self,
        spec: _Spec,
        policy: api.DeliverPolicy,
        start: int | None = None,
        *,
        idle: float | None = None,
    ) -> tuple[str, int]:
        """(name, matching messages from its start) of a new ephemeral consumer."""
        name = ephemeral_name()
        config = api.ConsumerConfig(
            name=name,
            filter_subject=spec.filter_subject or None,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.EXPLICIT,
            inactive_threshold=idle or spec.idle,
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await spec.jsm.add_consumer(spec.stream, config)
        except js_errors.NotFoundError as exc:
            raise stream_missing(spec.stream, spec.action) from exc
        except js_errors.APIError as exc:
            if isinstance(exc, js_errors.ServiceUnavailableError):
                raise self._fail(exc, spec.action) from exc
            raise ConfigError(
                "SUBJECT",
                f"the server refused a consumer of stream {spec.stream!r} for it: "
                f"{exc.description or exc}",
                value=spec.filter_subject or None,
                fix="name subjects the stream captures (or pass --stream)",
            ) from exc
        except Exception as exc:
            raise self._fail(exc, spec.action) from exc
        return name, int(info.num_pending or 0)

    async def _matching_from(self, spec: _Spec, start: int) -> int:
        name, matching = await self._create(
            spec, api.DeliverPolicy.BY_START_SEQUENCE, start, idle=PROBE_IDLE
        )
        await self.delete_ephemeral(spec.stream, name)
        return matching

    async def _nth_newest(self, spec: _Spec, n: int, first: int, newest: int) -> int:
        """The largest start sequence from which ``n`` or more messages match (there
        are more than ``n`` from ``first``)."""
        guess = max(first, newest - n + 1)
        if await self._matching_from(spec, guess) >= n:
            return guess  # the newest n sequences all match
        low, high = first, guess - 1
        while low < high:
            middle = (low + high + 1) // 2
            if await self._matching_from(spec, middle) >= n:
                low = middle
            else:
                high = middle - 1
        return low


@dataclass(frozen=True, slots=True)
class _Spec:
    """What every consumer of one ``create_ephemeral`` call shares."""

    jsm: JetStreamManager
    stream: str
    filter_subject: str
    idle: float
    action: str  # for error messages
