"""Our StreamConfig/ConsumerConfig messages to JetStream configs, and their diffs.

``ensure`` compares the declared config with what the server reports after the
server applied its defaults, so an unchanged declaration issues no update. A
setting the server cannot change on a live consumer (or stream) is reported as
a conflict with both values instead of deleting and recreating the resource.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import api

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds
from ...core.defaults import DEFAULT_ACK_WAIT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_ACK_PENDING
from ...core.subjects import FILTER_SEPARATOR, split_filter
from ...core.validation import start_time

_RETENTION = {
    pb.RETENTION_POLICY_UNSPECIFIED: api.RetentionPolicy.LIMITS,
    pb.RETENTION_POLICY_LIMITS: api.RetentionPolicy.LIMITS,
    pb.RETENTION_POLICY_INTEREST: api.RetentionPolicy.INTEREST,
    pb.RETENTION_POLICY_WORKQUEUE: api.RetentionPolicy.WORK_QUEUE,
}
_STORAGE = {
    pb.STORAGE_TYPE_UNSPECIFIED: api.StorageType.FILE,
    pb.STORAGE_TYPE_FILE: api.StorageType.FILE,
    pb.STORAGE_TYPE_MEMORY: api.StorageType.MEMORY,
}
# Unspecified means deliver everything (JetStream's default); the Go plugin used "new".
_DELIVER = {
    pb.DELIVER_POLICY_UNSPECIFIED: api.DeliverPolicy.ALL,
    pb.DELIVER_POLICY_ALL: api.DeliverPolicy.ALL,
    pb.DELIVER_POLICY_LAST: api.DeliverPolicy.LAST,
    pb.DELIVER_POLICY_NEW: api.DeliverPolicy.NEW,
    pb.DELIVER_POLICY_BY_START_SEQUENCE: api.DeliverPolicy.BY_START_SEQUENCE,
    pb.DELIVER_POLICY_BY_START_TIME: api.DeliverPolicy.BY_START_TIME,
}
_ACK = {
    pb.ACK_POLICY_UNSPECIFIED: api.AckPolicy.EXPLICIT,
    pb.ACK_POLICY_EXPLICIT: api.AckPolicy.EXPLICIT,
    pb.ACK_POLICY_NONE: api.AckPolicy.NONE,
    pb.ACK_POLICY_ALL: api.AckPolicy.ALL,
}

# Settings JetStream refuses to change on an existing consumer.
CONSUMER_IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time", "ack_policy")
# Settings JetStream refuses to change on an existing stream.
STREAM_IMMUTABLE = ("storage",)


@dataclass(frozen=True, slots=True)
class Difference:
    setting: str
    current: Any
    desired: Any

    def describe(self) -> str:
        return f"{self.setting} (current {show(self.current)}, configured {show(self.desired)})"


def show(value: Any) -> str:
    """A setting's value as the error messages (and IaC diffs) print it."""
    if hasattr(value, "value"):
        value = value.value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:g}s"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def _limit(value: int) -> int:
    """0 and -1 both mean unlimited; the server reports -1."""
    return value if value > 0 else -1


def _seconds(value: Any) -> float:
    return duration_seconds(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a or 0), float(b or 0), abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- streams ------------------------------------------------------------------
def stream_config(cfg: pb.StreamConfig) -> api.StreamConfig:
    max_age = _seconds(cfg.max_age) if cfg.HasField("max_age") else 0.0
    window = _seconds(cfg.duplicate_window) if cfg.HasField("duplicate_window") else None
    return api.StreamConfig(
        name=cfg.name,
        subjects=list(cfg.subjects),
        retention=_RETENTION[cfg.retention_policy],
        num_replicas=max(1, cfg.num_replicas),
        max_bytes=_limit(cfg.max_bytes),
        max_age=max_age,
        storage=_STORAGE[cfg.storage],
        duplicate_window=window or None,  # type: ignore[arg-type]
        max_msgs=_limit(cfg.max_msgs),
        max_msg_size=_limit(cfg.max_msg_size),
    )


def _expected_window(desired: api.StreamConfig) -> float:
    if desired.duplicate_window:
        return float(desired.duplicate_window)
    if desired.max_age and desired.max_age < DEFAULT_DUPLICATE_WINDOW:
        return float(desired.max_age)
    return DEFAULT_DUPLICATE_WINDOW


def stream_differences(current: api.StreamConfig, desired: api.StreamConfig) -> list[Difference]:
    pairs: list[tuple[str, Any, Any]] = [
        ("subjects", sorted(current.subjects or []), sorted(desired.subjects or [])),
        ("retention_policy", current.retention, desired.retention),
        ("num_replicas", current.num_replicas or 1, desired.num_replicas),
        ("max_bytes", _limit(current.max_bytes or -1), desired.max_bytes),
        ("max_age", float(current.max_age or 0.0), float(desired.max_age or 0.0)),
        ("storage", current.storage, desired.storage),
        ("duplicate_window", float(current.duplicate_window or 0.0), _expected_window(desired)),
        ("max_msgs", _limit(current.max_msgs or -1), desired.max_msgs),
        ("max_msg_size", _limit(current.max_msg_size or -1), desired.max_msg_size),
    ]
    return [Difference(s, cur, want) for s, cur, want in pairs if not _same(cur, want)]


# -- consumers ----------------------------------------------------------------
def consumer_config(cfg: pb.ConsumerConfig, stream_ack_wait: float | None) -> api.ConsumerConfig:
    """JetStream config of the durable ``cfg.name``; ack_wait falls back to the stream's."""
    setting = f'consumer "{cfg.name}"'
    policy = _DELIVER[cfg.deliver_policy]
    by_seq = policy is api.DeliverPolicy.BY_START_SEQUENCE
    by_time = policy is api.DeliverPolicy.BY_START_TIME
    ack_wait = _seconds(cfg.ack_wait) if cfg.HasField("ack_wait") else None
    if not ack_wait:
        ack_wait = stream_ack_wait or None
    backoff = [_seconds(step) for step in cfg.backoff] or None
    filters = split_filter(cfg.filter_subject)  # a list: JetStream's filter_subjects when > 1
    return api.ConsumerConfig(
        durable_name=cfg.name,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
        deliver_policy=policy,
        opt_start_seq=cfg.opt_start_seq if by_seq else None,
        opt_start_time=start_time(cfg, setting=f"{setting}.opt_start_time") if by_time else None,
        ack_policy=_ACK[cfg.ack_policy],
        ack_wait=ack_wait,
        max_deliver=_limit(cfg.max_deliver),
        max_ack_pending=cfg.max_ack_pending or None,
        backoff=backoff,
    )


def _filters(cfg: api.ConsumerConfig) -> str:
    """Both JetStream filter fields as one comma list, in the order given."""
    parts = [cfg.filter_subject] if cfg.filter_subject else list(cfg.filter_subjects or [])
    return FILTER_SEPARATOR.join(parts)


def _expected_ack_wait(desired: api.ConsumerConfig) -> float:
    if desired.backoff:
        return float(desired.backoff[0])
    return float(desired.ack_wait or DEFAULT_ACK_WAIT)


def _expected_max_ack_pending(desired: api.ConsumerConfig, current: int) -> int:
    if desired.max_ack_pending:
        return desired.max_ack_pending
    if desired.ack_policy is api.AckPolicy.NONE:
        return current  # not used without acks
    return DEFAULT_MAX_ACK_PENDING


def consumer_differences(
    current: api.ConsumerConfig, desired: api.ConsumerConfig
) -> list[Difference]:
    cur_pending = current.max_ack_pending or 0
    pairs: list[tuple[str, Any, Any]] = [
        ("deliver_policy", current.deliver_policy, desired.deliver_policy),
        ("opt_start_seq", current.opt_start_seq or 0, desired.opt_start_seq or 0),
        ("opt_start_time", current.opt_start_time, desired.opt_start_time),
        ("ack_policy", current.ack_policy, desired.ack_policy),
        ("filter_subject", _filters(current), _filters(desired)),
        ("max_deliver", _limit(current.max_deliver or -1), desired.max_deliver),
        ("ack_wait", float(current.ack_wait or 0.0), _expected_ack_wait(desired)),
        ("max_ack_pending", cur_pending, _expected_max_ack_pending(desired, cur_pending)),
        ("backoff", list(current.backoff or []), list(desired.backoff or [])),
    ]
    return [Difference(s, cur, want) for s, cur, want in pairs if not _same(cur, want)]
