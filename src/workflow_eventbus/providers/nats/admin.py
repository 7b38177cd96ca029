"""Live stream/consumer versus config, and deletion, on JetStream (the ``admin`` capability).

The comparison is the one ``ensure_stream``/``ensure_consumer`` make before they
update (``mapping.stream_differences`` / ``consumer_differences``, after the
server applied its defaults), so "no drift" here means "ensure would change
nothing".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import nats.js.errors as js_errors

from ..._proto import eventbus_pb2 as pb
from ...core.errors import EventbusError
from ..base import HasAdmin, SettingDrift
from . import mapping

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext, JetStreamManager


class NatsAdmin(HasAdmin):
    """``stream_drift`` / ``consumer_drift`` / ``delete_*`` for :class:`~.provider.NatsProvider`."""

    if TYPE_CHECKING:  # what the provider class supplies
        _stream_ack_wait: dict[str, float]

        def _client(self, action: str) -> tuple[NatsClient, JetStreamContext, JetStreamManager]: ...

        def _fail(self, exc: BaseException, action: str) -> EventbusError: ...

    async def stream_drift(self, cfg: pb.StreamConfig) -> list[SettingDrift] | None:
        action = f'read stream "{cfg.name}"'
        _, _, jsm = self._client(action)
        try:
            info = await jsm.stream_info(cfg.name)
        except js_errors.NotFoundError:
            return None
        except Exception as exc:
            raise self._fail(exc, action) from exc
        diffs = mapping.stream_differences(info.config, mapping.stream_config(cfg))
        return [_drift(d, mapping.STREAM_IMMUTABLE) for d in diffs]

    async def consumer_drift(self, cfg: pb.ConsumerConfig) -> list[SettingDrift] | None:
        action = f'read consumer "{cfg.name}" of stream "{cfg.stream_name}"'
        _, _, jsm = self._client(action)
        try:
            info = await jsm.consumer_info(cfg.stream_name, cfg.name)
        except js_errors.NotFoundError:
            return None
        except Exception as exc:
            raise self._fail(exc, action) from exc
        inherited = self._stream_ack_wait.get(cfg.stream_name)
        desired = mapping.consumer_config(cfg, inherited)
        diffs = mapping.consumer_differences(info.config, desired)
        return [_drift(d, mapping.CONSUMER_IMMUTABLE) for d in diffs]

    async def delete_stream(self, name: str) -> bool:
        action = f'delete stream "{name}"'
        _, _, jsm = self._client(action)
        return await self._delete(jsm.delete_stream(name), action)

    async def delete_consumer(self, stream: str, name: str) -> bool:
        action = f'delete consumer "{name}" of stream "{stream}"'
        _, _, jsm = self._client(action)
        return await self._delete(jsm.delete_consumer(stream, name), action)

    async def _delete(self, call: Any, action: str) -> bool:
        try:
            await call
        except js_errors.NotFoundError:
            return False
        except Exception as exc:
            raise self._fail(exc, action) from exc
        return True


def _drift(diff: mapping.Difference, immutable: tuple[str, ...]) -> SettingDrift:
    current, desired = (mapping.show(v) for v in (diff.current, diff.desired))
    return SettingDrift(diff.setting, current, desired, diff.setting in immutable)
