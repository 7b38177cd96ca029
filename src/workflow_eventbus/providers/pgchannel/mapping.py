"""Stream and consumer configs as row values, tokens, and the checks on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds
from ...core.defaults import DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_ACK_PENDING
from ...core.errors import ConfigError, RequestError
from ...core.names import CONSUMER, STREAM
from ...core.validation import start_time as parse_start_time
from .rules import validate_pg_stream_name

UNLIMITED_DELIVER = 2**31 - 1  # stored for "unlimited" so Go's `count > max_deliver` never fires

RETENTION = {
    pb.RETENTION_POLICY_UNSPECIFIED: "limits",
    pb.RETENTION_POLICY_LIMITS: "limits",
    pb.RETENTION_POLICY_INTEREST: "interest",
    pb.RETENTION_POLICY_WORKQUEUE: "workqueue",
}
DELIVER = {
    pb.DELIVER_POLICY_UNSPECIFIED: "all",
    pb.DELIVER_POLICY_ALL: "all",
    pb.DELIVER_POLICY_LAST: "last",
    pb.DELIVER_POLICY_NEW: "new",
    pb.DELIVER_POLICY_BY_START_SEQUENCE: "by_start_sequence",
    pb.DELIVER_POLICY_BY_START_TIME: "by_start_time",
}
ACK_POLICY = {
    pb.ACK_POLICY_UNSPECIFIED: "explicit",
    pb.ACK_POLICY_EXPLICIT: "explicit",
    pb.ACK_POLICY_NONE: "none",
    pb.ACK_POLICY_ALL: "all",
}
_TOKEN_HINT = (
    'pass the ack_token of a delivered message ("<stream>:<consumer>:<sequence>:<delivery>")'
)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _limit(value: int) -> int:
    return value if value > 0 else -1


def duplicate_window(cfg: pb.StreamConfig) -> float:
    """Explicit window, else 2 minutes capped by max_age (as JetStream does)."""
    if cfg.HasField("duplicate_window") and duration_seconds(cfg.duplicate_window) > 0:
        return duration_seconds(cfg.duplicate_window)
    max_age = duration_seconds(cfg.max_age)
    if 0 < max_age < DEFAULT_DUPLICATE_WINDOW:
        return max_age
    return DEFAULT_DUPLICATE_WINDOW


def stream_row(cfg: pb.StreamConfig) -> dict[str, Any]:
    validate_pg_stream_name(cfg.name, setting=f'{STREAM} "{cfg.name}": name')
    max_age = duration_seconds(cfg.max_age)
    ack_wait = duration_seconds(cfg.ack_wait)
    return {
        "name": cfg.name,
        "subjects": list(cfg.subjects),
        "max_age": int(max_age) if max_age > 0 else None,
        "retention": RETENTION[cfg.retention_policy],
        "max_msgs": _limit(cfg.max_msgs),
        "max_bytes": _limit(cfg.max_bytes),
        "max_msg_size": _limit(cfg.max_msg_size),
        "window_ms": _ms(duplicate_window(cfg)),
        "ack_wait_ms": _ms(ack_wait) if ack_wait > 0 else None,
    }


def check_consumer_name(name: str, stream: str) -> None:
    where = f'{CONSUMER} "{name}"'
    validate_pg_stream_name(stream, setting=f"{where}: stream_name")
    if not name or ":" in name:
        raise ConfigError(
            f"{where}: name",
            "pgchannel durable names must be non-empty and cannot contain ':'",
            value=name,
            fix="use letters, digits, '-' and '_'",
        )


def start_time(cfg: pb.ConsumerConfig) -> datetime | None:
    if cfg.deliver_policy != pb.DELIVER_POLICY_BY_START_TIME:
        return None
    return parse_start_time(cfg, setting=f'{CONSUMER} "{cfg.name}": opt_start_time')


def consumer_row(cfg: pb.ConsumerConfig) -> dict[str, Any]:
    check_consumer_name(cfg.name, cfg.stream_name)
    ack_wait = duration_seconds(cfg.ack_wait)
    by_seq = cfg.deliver_policy == pb.DELIVER_POLICY_BY_START_SEQUENCE
    return {
        "stream": cfg.stream_name,
        "name": cfg.name,
        "filter": cfg.filter_subject,
        "ack_policy": ACK_POLICY[cfg.ack_policy],
        "max_deliver": cfg.max_deliver if cfg.max_deliver > 0 else UNLIMITED_DELIVER,
        "deliver_policy": DELIVER[cfg.deliver_policy],
        "opt_start_seq": int(cfg.opt_start_seq) if by_seq else None,
        "opt_start_time": start_time(cfg),
        "ack_wait_ms": _ms(ack_wait) if ack_wait > 0 else None,
        "max_ack_pending": cfg.max_ack_pending or DEFAULT_MAX_ACK_PENDING,
        "backoff_ms": [_ms(duration_seconds(step)) for step in cfg.backoff],
    }


def immutable_differences(existing: tuple[Any, ...], desired: dict[str, Any]) -> list[str]:
    """Settings JetStream will not change on an existing durable, where they differ."""
    deliver_policy, opt_seq, opt_time, ack_policy = existing
    if deliver_policy is None:
        return []  # created by the Go plugin: adopted as it is
    pairs = [
        ("deliver_policy", deliver_policy, desired["deliver_policy"]),
        ("opt_start_seq", opt_seq, desired["opt_start_seq"]),
        ("opt_start_time", opt_time, desired["opt_start_time"]),
        ("ack_policy", ack_policy, desired["ack_policy"]),
    ]
    return [f"{name} is {old!r}, config says {new!r}" for name, old, new in pairs if old != new]


def parse_token(token: str) -> tuple[str, str, int, int | None]:
    """``stream:consumer:seq[:delivery]`` -> parts; 3-part tokens come from the Go plugin."""
    parts = token.split(":")
    if len(parts) not in (3, 4) or not all(parts) or not all(p.isdigit() for p in parts[2:]):
        raise RequestError(
            "ack_token", "malformed pgchannel ack token", value=token, fix=_TOKEN_HINT
        )
    validate_pg_stream_name(parts[0], setting="ack_token")
    generation = int(parts[3]) if len(parts) == 4 else None
    return parts[0], parts[1], int(parts[2]), generation
