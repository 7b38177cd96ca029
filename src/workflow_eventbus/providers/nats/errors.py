"""nats-py exceptions to our error hierarchy, with a hint of what to do."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors as js_errors

from ...errors import (
    BrokerUnavailableError,
    EventbusError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
)

# JetStream API error codes we give a specific meaning.
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
MESSAGE_TOO_LARGE = 10054

_DOWN = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
)


def describe(exc: BaseException) -> str:
    if isinstance(exc, js_errors.APIError):
        return f"{exc.description or type(exc).__name__} (code {exc.code}, err_code {exc.err_code})"
    text = str(exc)
    return text or type(exc).__name__


def translate(exc: BaseException, action: str, *, connected: bool) -> EventbusError:
    """One of our errors for a failed nats-py call; ``action`` says what was attempted."""
    if isinstance(exc, EventbusError):
        return exc
    reason = describe(exc)
    if isinstance(exc, _DOWN) or (isinstance(exc, asyncio.TimeoutError) and not connected):
        return BrokerUnavailableError(
            f"nats: {action}: the broker is unreachable ({reason}); the client keeps "
            "reconnecting: check the server is running and reachable, then retry"
        )
    if isinstance(exc, asyncio.TimeoutError):
        return ProviderError(
            f"nats: {action}: no answer from JetStream in time ({reason}); check the server "
            "has JetStream enabled and is not overloaded, then retry"
        )
    if isinstance(exc, nats.errors.NoRespondersError | js_errors.ServiceUnavailableError):
        return BrokerUnavailableError(
            f"nats: {action}: JetStream is not answering ({reason}); enable JetStream "
            "on the server (nats-server -js) or wait for it to recover"
        )
    if isinstance(exc, js_errors.APIError) and exc.err_code == MESSAGE_TOO_LARGE:
        return PayloadTooLargeError(
            "payload",
            f"{action}: the stream refused the message: {reason}",
            fix="send a smaller message or raise the stream's max_msg_size",
        )
    if isinstance(exc, js_errors.NotFoundError):
        return NotFoundError(f"nats: {action}: {reason}")
    return ProviderError(f"nats: {action}: {reason}")
