"""Validation rules for stream and consumer configs (reference §3, §6.2); a broker's rules
depend on its provider and live with the provider registry (:mod:`..providers`).

Each function raises :class:`ConfigError` naming the module, the setting, the
bad value and the fix; on success it returns nothing and changes nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .._proto import eventbus_pb2 as pb
from .config import duration_seconds
from .defaults import MAX_NAME
from .errors import ConfigError
from .names import CONSUMER, EPHEMERAL_PREFIX, STREAM, TRIGGER_DATA_KEYS
from .subjects import validate_filter, validate_subject

_NAME_BAD = re.compile(r"[\s.*>/\\]")


def validate_stream(name: str, cfg: pb.StreamConfig) -> None:
    where = f'{STREAM} "{name}"'
    _check_name(cfg.name, f"{where}: name", "stream", fix="set name, e.g. name: ORDERS")
    if not cfg.subjects:
        raise ConfigError(
            f"{where}: subjects",
            "must contain at least one entry",
            fix='set subjects, e.g. subjects: ["orders.>"]',
        )
    for i, subject in enumerate(cfg.subjects):
        validate_subject(subject, setting=f"{where}: subjects[{i}]", wildcards=True)
    if cfg.num_replicas < 0 or cfg.num_replicas > 5:
        raise ConfigError(
            f"{where}: num_replicas", "must be between 1 and 5", value=cfg.num_replicas
        )
    for field in ("max_bytes", "max_msgs", "max_msg_size"):
        if getattr(cfg, field) < -1:
            raise ConfigError(
                f"{where}: {field}", "must be -1 (unlimited) or more", value=getattr(cfg, field)
            )


def _check_name(name: str, setting: str, kind: str, *, fix: str) -> None:
    """A stream or durable name: present, no subject characters, not too long."""
    if not name:
        raise ConfigError(setting, "is required", fix=fix)
    if _NAME_BAD.search(name):
        raise ConfigError(
            setting,
            f"{kind} names cannot contain spaces, '.', '*', '>', '/' or '\\'",
            value=name,
            fix="use letters, digits, '-' and '_'",
        )
    _check_length(name, setting)


def _check_length(name: str, setting: str) -> None:
    if len(name) > MAX_NAME:
        raise ConfigError(
            setting,
            f"is {len(name)} characters long; at most {MAX_NAME} are allowed",
            value=name[:40] + "...",
            fix="use a shorter name",
        )


def validate_consumer(name: str, cfg: pb.ConsumerConfig, *, kind: str = CONSUMER) -> None:
    where = f'{kind} "{name}"'
    _check_name(cfg.name, f"{where}: name", "durable", fix="set name to the durable consumer name")
    if cfg.name.startswith(EPHEMERAL_PREFIX):
        raise ConfigError(
            f"{where}: name",
            f"names starting with {EPHEMERAL_PREFIX} are the temporary consumers of tail",
            value=cfg.name,
            fix="choose another durable name",
        )
    if not cfg.stream_name:
        raise ConfigError(
            f"{where}: stream_name", "is required", fix="set stream_name to the stream's name"
        )
    if cfg.filter_subject:
        validate_filter(cfg.filter_subject, setting=f"{where}: filter_subject")
    if cfg.max_deliver < -1:
        raise ConfigError(
            f"{where}: max_deliver", "must be -1 (unlimited) or more", value=cfg.max_deliver
        )
    if cfg.backoff and 0 < cfg.max_deliver <= len(cfg.backoff):
        raise ConfigError(
            f"{where}: backoff",
            f"has {len(cfg.backoff)} steps but max_deliver is {cfg.max_deliver}",
            fix="make max_deliver larger than the number of backoff steps",
        )
    for i, step in enumerate(cfg.backoff):
        if duration_seconds(step) <= 0:
            raise ConfigError(
                f"{where}: backoff[{i}]", "must be positive", value=f"{duration_seconds(step)}s"
            )
    if cfg.deliver_policy == pb.DELIVER_POLICY_BY_START_SEQUENCE and cfg.opt_start_seq == 0:
        raise ConfigError(
            f"{where}: opt_start_seq",
            "is required with deliver_policy by_start_sequence",
            fix="set opt_start_seq to the first stream sequence to deliver",
        )
    if cfg.deliver_policy == pb.DELIVER_POLICY_BY_START_TIME and not cfg.opt_start_time:
        raise ConfigError(
            f"{where}: opt_start_time",
            "is required with deliver_policy by_start_time",
            fix='set opt_start_time to an RFC 3339 time, e.g. "2026-01-01T00:00:00Z"',
        )
    start_time(cfg, setting=f"{where}: opt_start_time")
    for field in ("max_ack_pending", "max_in_flight", "fetch_batch"):
        if getattr(cfg, field) < 0:
            raise ConfigError(
                f"{where}: {field}", "must be zero or positive", value=getattr(cfg, field)
            )
    for i, key in enumerate(cfg.trigger_data):
        if key not in TRIGGER_DATA_KEYS:
            raise ConfigError(
                f"{where}: trigger_data[{i}]",
                "is not a trigger data key",
                value=key,
                fix=f"use some of: {', '.join(TRIGGER_DATA_KEYS)}",
            )
    if cfg.dead_letter_subject:
        validate_subject(
            cfg.dead_letter_subject, setting=f"{where}: dead_letter_subject", wildcards=False
        )


def start_time(cfg: pb.ConsumerConfig, *, setting: str) -> datetime | None:
    """``opt_start_time`` as an aware datetime (UTC when no offset is given), or None."""
    if not cfg.opt_start_time:
        return None
    try:
        moment = datetime.fromisoformat(cfg.opt_start_time)
    except ValueError as exc:
        raise ConfigError(
            setting,
            "not an RFC 3339 time",
            value=cfg.opt_start_time,
            fix='write it like "2026-01-01T00:00:00Z"',
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
