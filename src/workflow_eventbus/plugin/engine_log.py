"""The plugin's notable log records, sent to the engine as ``Log`` entries.

Every record still goes to stderr (transport.setup_logging). A record also
becomes an entry of the engine's ``EngineCallbackService.Log`` when it comes
from a ``workflow_eventbus`` logger, is at INFO or above and names an ``event``
in its ``extra``::

    log.warning("...", extra={"event": "broker.lost", "broker": "bus", "reason": "..."})

Only records written for the engine carry an ``event``: a broker connection
lost (``broker.lost``, WARNING) and restored (``broker.restored``, INFO, so
that a lost one is seen to end), a message dead-lettered
(``message.dead_lettered``, WARNING), a drain cut by the host's deadline and
pipelines cut short when a trigger stops (``trigger.drain_cut``,
``trigger.pipeline_cut_short``, ``trigger.stopped_cut_short``, WARNING), a
module created with an old ``infra.eventbus*`` type (``module.deprecated_type``,
WARNING: ``wfctl infra plan`` would plan it as a cloud resource).

The entry: ``level`` ``info``, ``warn`` or ``error``; ``message`` the
formatted text; ``fields`` the ``extra`` keys (``event`` and the record's
own, e.g. ``broker``, ``stream``, ``consumer``, ``sequence``,
``delivery_count``) plus ``logger``. Strings are redacted (core.errors.redact).
Until ConfigureCallback has connected the callback channel there is no
engine to tell: records go to stderr only. Sending never waits (the client's
bounded queue; see CallbackClient.log).
"""

from __future__ import annotations

import asyncio
import logging
import threading

from .callbacks.client import CallbackClient, LogValue

LOGGER = "workflow_eventbus"
EVENT = "event"
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def engine_level(levelno: int) -> str:
    """The engine's name of a logging level (CRITICAL is ``error``)."""
    if levelno >= logging.ERROR:
        return "error"
    return "warn" if levelno >= logging.WARNING else "info"


def entry_fields(record: logging.LogRecord) -> dict[str, LogValue]:
    """The ``extra`` keys of ``record`` plus its logger name; values that are not
    str, number, bool or None become their text."""
    fields: dict[str, LogValue] = {EVENT: str(getattr(record, EVENT))}
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRS or key.startswith("_") or key == EVENT:
            continue
        plain = value is None or isinstance(value, str | int | float | bool)
        fields[key] = value if plain else str(value)
    fields["logger"] = record.name
    return fields


def _for_engine(record: logging.LogRecord) -> bool:
    return record.name.startswith(LOGGER) and hasattr(record, EVENT)


class EngineLogHandler(logging.Handler):
    """Hands records with an ``event`` to :meth:`CallbackClient.log`.

    Attach it to the ``workflow_eventbus`` logger with :meth:`install` from the
    event loop that runs the client; a record logged on another thread is
    passed to that loop."""

    def __init__(self, callbacks: CallbackClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.callbacks = callbacks
        self.loop = loop
        self._thread = threading.get_ident()
        self.addFilter(_for_engine)

    @classmethod
    def install(cls, callbacks: CallbackClient) -> EngineLogHandler:
        handler = cls(callbacks, asyncio.get_running_loop())
        logging.getLogger(LOGGER).addHandler(handler)
        return handler

    def uninstall(self) -> None:
        logging.getLogger(LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level, message = engine_level(record.levelno), record.getMessage()
            fields = entry_fields(record)
            if threading.get_ident() == self._thread:
                self.callbacks.log(level, message, fields)
            else:
                self.loop.call_soon_threadsafe(self.callbacks.log, level, message, fields)
        except Exception:  # a closed loop, a message that does not format
            self.handleError(record)
