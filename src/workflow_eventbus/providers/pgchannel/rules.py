"""Config rules that only pgchannel has (pure: no database is touched)."""

from __future__ import annotations

import re

from ..._proto import eventbus_pb2 as pb
from ...core.errors import ConfigError
from ..targets import IN_PROCESS

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_STREAM = re.compile(r"[A-Za-z0-9_]+")
MAX_STREAM_NAME = 54  # leaves room for the prefixes of the channel and lock names


def validate_pgchannel(where: str, cfg: pb.ClusterConfig) -> None:
    """``broker_target: in_process`` and a valid schema name.

    The DSN is not checked here: without ``dsn`` it comes from
    ``EVENTBUS_<NAME>_URI`` when the module is initialised, and the broker module
    reports a missing one at start."""
    if cfg.broker_target != IN_PROCESS:
        raise ConfigError(
            f"{where}: broker_target",
            "pgchannel requires broker_target=in_process",
            value=cfg.broker_target or None,
            fix=f"set broker_target: {IN_PROCESS}",
        )
    if cfg.schema and not _SCHEMA.fullmatch(cfg.schema):
        raise ConfigError(
            f"{where}: schema",
            "not a valid schema name",
            value=cfg.schema,
            fix="use lower-case letters, digits and _ (at most 63 characters)",
        )


def validate_pg_stream_name(name: str, *, setting: str) -> None:
    if not _STREAM.fullmatch(name) or len(name) > MAX_STREAM_NAME:
        raise ConfigError(
            setting,
            f"pgchannel stream names must match [A-Za-z0-9_]+ (at most {MAX_STREAM_NAME} "
            "characters)",
            value=name,
            fix="rename the stream, e.g. ORDERS_V1",
        )
