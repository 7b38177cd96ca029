"""nats-py exceptions to our error hierarchy, with a hint of what to do."""

from __future__ import annotations

import asyncio
import ssl

import nats.errors
import nats.js.errors as js_errors

from ...core.errors import (
    BrokerUnavailableError,
    ConflictError,
    EventbusError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
)
from . import mapping

# JetStream API error codes we give a specific meaning.
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
MESSAGE_TOO_LARGE = 10054
# Deleting a message that is not there: 10043 when its sequence is unknown to the
# stream (deleted already, or past its end), 10057 when the delete itself found none.
SEQUENCE_NOT_FOUND = 10043
DELETE_FOUND_NONE = 10057

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


_FATAL_TEXT = ("authorization violation", "authentication", "tls required", "secure connection")


def is_fatal(exc: BaseException) -> bool:
    """Errors retrying cannot fix (credentials, TLS): connect() gives up at once."""
    if isinstance(exc, nats.errors.AuthorizationError | nats.errors.SecureConnFailedError):
        return True
    if isinstance(exc, ssl.SSLError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _FATAL_TEXT)


def listing(diffs: list[mapping.Difference]) -> str:
    return "; ".join(d.describe() for d in diffs)


def stream_conflict(name: str, diffs: list[mapping.Difference], why: str) -> ConflictError:
    return ConflictError(
        f'nats stream "{name}": cannot apply {listing(diffs)}: {why}; fix: set the '
        "setting back to its current value, or delete the stream by hand "
        f"(nats stream rm {name}; this deletes its messages) and let it be recreated"
    )


def consumer_conflict(stream: str, name: str, diffs: list[mapping.Difference]) -> ConflictError:
    return ConflictError(
        f'nats consumer "{name}" on stream "{stream}": {listing(diffs)}: JetStream cannot '
        "change this on an existing consumer; fix: set it back to the current value, or "
        f"delete the consumer by hand (nats consumer rm {stream} {name}; it loses its "
        "position) and let it be recreated"
    )


def stream_missing(stream: str, action: str) -> NotFoundError:
    return NotFoundError(
        f'nats: {action}: stream "{stream}" does not exist; declare an eventbus.stream '
        f"with name {stream} (started before its consumers) or fix stream_name"
    )


def consumer_missing(stream: str, consumer: str, action: str) -> NotFoundError:
    return NotFoundError(
        f'nats: {action}: consumer "{consumer}" does not exist on stream "{stream}"; '
        f"declare an eventbus.consumer with name {consumer} and stream_name {stream}"
    )
