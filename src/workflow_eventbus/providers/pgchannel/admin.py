"""Live stream/consumer rows versus config, and deletion, on pgchannel (the ``admin``
capability).

A stream or consumer is a row; ``ensure_stream``/``ensure_consumer`` write exactly
what ``mapping.stream_row``/``consumer_row`` compute, so a drift is a column whose
stored value differs from that computation. Deleting a stream removes its
consumers, leases, stored events and dedup ids in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..._proto import eventbus_pb2 as pb
from ..base import HasAdmin, SettingDrift
from . import mapping as m

if TYPE_CHECKING:
    from . import queries as q
    from .checkout import Checkout

STREAM_ROW = """
SELECT subjects, max_age_seconds, retention, max_msgs, max_bytes, max_msg_size,
       duplicate_window_ms, ack_wait_ms
  FROM {streams} WHERE name = %(name)s
"""
CONSUMER_ROW = """
SELECT coalesce(filter_subject, ''), ack_policy, max_deliver, deliver_policy, opt_start_seq,
       opt_start_time, ack_wait_ms, max_ack_pending, backoff_ms
  FROM {consumers} WHERE stream_name = %(stream)s AND name = %(name)s
"""
DELETE_CONSUMER = (
    "DELETE FROM {deliveries} WHERE stream_name = %(stream)s AND consumer_name = %(name)s",
    "DELETE FROM {consumers} WHERE stream_name = %(stream)s AND name = %(name)s",
)
DELETE_STREAM = (
    "DELETE FROM {deliveries} WHERE stream_name = %(stream)s",
    "DELETE FROM {consumers} WHERE stream_name = %(stream)s",
    "DELETE FROM {events} WHERE stream_name = %(stream)s",
    "DELETE FROM {msg_ids} WHERE stream_name = %(stream)s",
    "DELETE FROM {streams} WHERE name = %(stream)s",
)

# (config setting, row key, unit) in SELECT order; the unit formats the value.
_STREAM = (
    ("subjects", "subjects", ""),
    ("max_age", "max_age", "s"),
    ("retention_policy", "retention", ""),
    ("max_msgs", "max_msgs", ""),
    ("max_bytes", "max_bytes", ""),
    ("max_msg_size", "max_msg_size", ""),
    ("duplicate_window", "window_ms", "ms"),
    ("ack_wait", "ack_wait_ms", "ms"),
)
_CONSUMER = (
    ("filter_subject", "filter", ""),
    ("ack_policy", "ack_policy", ""),
    ("max_deliver", "max_deliver", ""),
    ("deliver_policy", "deliver_policy", ""),
    ("opt_start_seq", "opt_start_seq", ""),
    ("opt_start_time", "opt_start_time", ""),
    ("ack_wait", "ack_wait_ms", "ms"),
    ("max_ack_pending", "max_ack_pending", ""),
    ("backoff", "backoff_ms", "ms"),
)
STREAM_IMMUTABLE = ("retention_policy",)  # ensure_stream refuses to change it
CONSUMER_IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time", "ack_policy")


class PgAdmin(HasAdmin):
    """``stream_drift`` / ``consumer_drift`` / ``delete_*`` for the pgchannel provider."""

    if TYPE_CHECKING:  # what the provider class supplies
        sql: q.Queries
        _streams_loaded: float

        def _conn(self, what: str) -> Checkout: ...

    async def stream_drift(self, cfg: pb.StreamConfig) -> list[SettingDrift] | None:
        desired = m.stream_row(cfg)
        async with self._conn(f'read stream "{cfg.name}"') as conn:
            cur = await conn.execute(self.sql(STREAM_ROW), {"name": cfg.name})
            row = await cur.fetchone()
        if row is None:
            return None
        stored = dict(zip((key for _, key, _ in _STREAM), row, strict=True))
        stored["subjects"], desired["subjects"] = (
            sorted(stored["subjects"]),
            sorted(desired["subjects"]),
        )
        return _drifts(_STREAM, stored, desired, STREAM_IMMUTABLE)

    async def consumer_drift(self, cfg: pb.ConsumerConfig) -> list[SettingDrift] | None:
        desired = m.consumer_row(cfg)
        params = {"stream": cfg.stream_name, "name": cfg.name}
        async with self._conn(f'read consumer "{cfg.name}"') as conn:
            cur = await conn.execute(self.sql(CONSUMER_ROW), params)
            row = await cur.fetchone()
        if row is None:
            return None
        stored = dict(zip((key for _, key, _ in _CONSUMER), row, strict=True))
        stored["backoff_ms"] = list(stored["backoff_ms"] or [])
        immutable: tuple[str, ...] = CONSUMER_IMMUTABLE
        if stored["deliver_policy"] is None:  # made by the Go plugin: adopted as it is
            immutable = ()
            for setting in CONSUMER_IMMUTABLE:
                key = next(k for s, k, _ in _CONSUMER if s == setting)
                stored[key] = desired[key]
        return _drifts(_CONSUMER, stored, desired, immutable)

    async def delete_stream(self, name: str) -> bool:
        found = await self._delete(DELETE_STREAM, {"stream": name}, f'delete stream "{name}"')
        self._streams_loaded = 0.0  # publish reloads the stream list
        return found

    async def delete_consumer(self, stream: str, name: str) -> bool:
        params = {"stream": stream, "name": name}
        return await self._delete(DELETE_CONSUMER, params, f'delete consumer "{name}"')

    async def _delete(
        self, statements: tuple[str, ...], params: Mapping[str, str], what: str
    ) -> bool:
        """Run the statements in one transaction; True when the last one removed a row."""
        async with self._conn(what) as conn, conn.transaction():
            for statement in statements:
                cur = await conn.execute(self.sql(statement), params)
        return bool(cur.rowcount)


def _drifts(
    columns: tuple[tuple[str, str, str], ...],
    stored: Mapping[str, Any],
    desired: Mapping[str, Any],
    immutable: tuple[str, ...],
) -> list[SettingDrift]:
    return [
        SettingDrift(
            setting, _show(stored[key], unit), _show(desired[key], unit), setting in immutable
        )
        for setting, key, unit in columns
        if stored[key] != desired[key]
    ]


def _show(value: Any, unit: str) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v, unit) for v in value) + "]"
    if unit == "ms":
        return f"{value / 1000:g}s"
    return f"{value}{unit}"
