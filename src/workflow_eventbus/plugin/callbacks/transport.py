"""The callback transport: how the plugin makes unary calls to the engine.

Two implementations answer the same small interface, :class:`UnaryTransport`:

- ``h2`` (the default): :class:`~.h2.UnaryChannel`, our lean HTTP/2 client;
- ``grpc``: :class:`~.grpcaio.GrpcChannel` on ``grpc.aio``.

``WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT`` picks one. Both fail with
:class:`~.errors.RpcError` carrying the same gRPC code names, so a caller
cannot tell which one ran.

Every call has a deadline. A ``TriggerWorkflow`` runs the whole pipeline in the
engine before it answers, so the default is generous (five minutes):
meanwhile the subscriber keeps the message leased with in-progress signals
at half its ack wait; when the deadline passes, the call fails, the message is
nak'd with the trigger's backoff and delivered again (the engine may still
finish the first run: delivery is at least once). A hung engine therefore holds
a message for at most the deadline. ``WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT``
(a duration such as ``90s`` or ``10m``; a bare number is seconds) changes it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Protocol

from ...core.config import parse_duration
from ...core.defaults import DEFAULT_CALLBACK_TIMEOUT, DEFAULT_CALLBACK_TRANSPORT
from ...core.errors import ConfigError
from .grpcaio import GrpcChannel
from .h2 import UnaryChannel

TRANSPORT_ENV = "WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT"
TIMEOUT_ENV = "WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT"
TRANSPORTS = ("h2", "grpc")
CONNECT_TIMEOUT = 5.0  # seconds: the h2 transport's bound on connecting (grpc has its own)


class UnaryTransport(Protocol):
    """Unary gRPC calls to the engine's callback service."""

    async def unary(self, method: str, request: bytes, timeout: float) -> bytes:
        """Call ``method`` (``/package.Service/Method``) with the serialized request;
        the serialized answer, or :class:`~.errors.RpcError`, at the latest
        ``DEADLINE_EXCEEDED`` after ``timeout`` seconds."""
        ...

    async def close(self) -> None:
        """Fail the open calls and refuse new ones."""
        ...


def transport_kind(environ: Mapping[str, str] | None = None) -> str:
    """The transport ``WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT`` names (default ``h2``)."""
    env = os.environ if environ is None else environ
    return check_kind(
        env.get(TRANSPORT_ENV, "").strip() or DEFAULT_CALLBACK_TRANSPORT, TRANSPORT_ENV
    )


def check_kind(kind: str, setting: str) -> str:
    if kind not in TRANSPORTS:
        raise ConfigError(
            setting,
            "unknown callback transport",
            value=kind,
            fix=f"use one of {', '.join(TRANSPORTS)} (default {DEFAULT_CALLBACK_TRANSPORT})",
        )
    return kind


def callback_timeout(environ: Mapping[str, str] | None = None) -> float:
    """The deadline ``WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT`` sets, in seconds (default 300)."""
    env = os.environ if environ is None else environ
    text = env.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CALLBACK_TIMEOUT
    return check_timeout(parse_duration(text, setting=TIMEOUT_ENV), TIMEOUT_ENV, text)


def check_timeout(seconds: float, setting: str, value: object) -> float:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(
            setting,
            "the callback deadline must be a positive duration (a call must end some time)",
            value=value,
            fix=f'use a duration such as "90s" or "10m"; the default is '
            f"{DEFAULT_CALLBACK_TIMEOUT:g}s",
        )
    return seconds


def open_channel(
    network: str,
    address: str,
    *,
    kind: str | None = None,
    environ: Mapping[str, str] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> UnaryTransport:
    """A channel to the engine at ``address`` (``network`` ``unix`` or ``tcp``) on the
    transport ``kind`` names, else the one the environment names. Nothing is dialled
    before the first call."""
    chosen = transport_kind(environ) if kind is None else check_kind(kind, "callback transport")
    if chosen == "grpc":
        return GrpcChannel(network, address)
    return UnaryChannel(network, address, connect_timeout=connect_timeout)
