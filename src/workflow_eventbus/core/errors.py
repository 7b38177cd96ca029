"""One error hierarchy for the whole package.

Every error a user can trigger says three things: which setting (or request
field) is wrong, the offending value, and what to do instead. Secrets never
appear: values pass through :func:`redact` before they are formatted.
"""

from __future__ import annotations

import re
from typing import Any

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@"
)
_KV_SECRET = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|nkey|seed)=([^\s&]+)")


def redact(text: str) -> str:
    """Hide passwords and tokens in URLs, DSNs and key=value strings."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _KV_SECRET.sub(lambda m: f"{m.group(1)}=***", text)


class EventbusError(Exception):
    """Base of every error raised by workflow_eventbus."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(EventbusError):
    """A module, step or trigger config is invalid.

    ``setting`` is the dotted path of the key (``eventbus.broker "bus": provider``),
    ``value`` the bad value (``None`` when missing) and ``fix`` what to do.
    """

    def __init__(self, setting: str, problem: str, *, value: Any = None, fix: str = "") -> None:
        self.setting = setting
        self.value = value
        self.fix = fix
        text = f"{setting}: {problem}"
        if value is not None:
            text += f" (got {value!r})"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class RequestError(ConfigError):
    """A step input or RPC request is invalid (same shape as ConfigError)."""


class NotFoundError(EventbusError):
    """A named broker, stream, consumer or handle does not exist."""


class BrokerUnavailableError(EventbusError):
    """The broker cannot be reached (connect failure, timeout, not started)."""


class ConflictError(EventbusError):
    """An existing broker resource disagrees with the declared config."""


class ProviderError(EventbusError):
    """The broker rejected an operation (publish, fetch, ack, ...)."""


class PayloadTooLargeError(RequestError):
    """A message exceeds the broker's max payload."""
