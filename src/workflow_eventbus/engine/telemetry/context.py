"""What a publish tells the tracer beyond the hook's arguments, through context variables.

Two facts reach :meth:`Telemetry.before_publish` this way:

* the **pipeline's trace context**: the engine runs each step of a triggered
  pipeline in its own ExecuteStep call (its own task), where the consumer span of
  the trigger is not current. The plugin finds the pipeline's ``traceparent`` in
  the step request (the trigger data carries it) and sets it with
  :func:`pipeline_trace` for the call; :func:`announce` hands it to the hook as
  ``parent``;
* the **outgoing message** (subject, message id, payload size): the hook's
  signature passes only the headers, so :func:`announce` makes the message
  readable with :func:`outgoing` while the hook runs.

Both are context variables, so concurrent publishes never see each other's.
The publish step calls :func:`announce` only when telemetry is on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ...providers.base import OutboundMessage
from . import Telemetry

_PIPELINE: ContextVar[Mapping[str, str] | None] = ContextVar(
    "workflow_eventbus_pipeline_trace", default=None
)
_OUTGOING: ContextVar[OutboundMessage | None] = ContextVar(
    "workflow_eventbus_outgoing", default=None
)

TRACE_KEYS = ("traceparent", "tracestate")


@contextmanager
def pipeline_trace(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Publishes in this block continue the trace of ``carrier`` (``traceparent``,
    optionally ``tracestate``); None or empty leaves the context as it is."""
    if not carrier:
        yield
        return
    mark = _PIPELINE.set(carrier)
    try:
        yield
    finally:
        _PIPELINE.reset(mark)


def current_pipeline_trace() -> Mapping[str, str] | None:
    """The carrier set by the innermost :func:`pipeline_trace`, if any."""
    return _PIPELINE.get()


def announce(
    telemetry: Telemetry, headers: MutableMapping[str, str], message: OutboundMessage
) -> Any:
    """``telemetry.before_publish`` for ``message`` (whose header dict is ``headers``),
    with the pipeline's trace context as parent and the message readable through
    :func:`outgoing` meanwhile."""
    mark = _OUTGOING.set(message)
    try:
        return telemetry.before_publish(headers, _PIPELINE.get())
    finally:
        _OUTGOING.reset(mark)


def outgoing() -> OutboundMessage | None:
    """The message being announced by :func:`announce` (None outside of it)."""
    return _OUTGOING.get()


__all__ = ["TRACE_KEYS", "announce", "current_pipeline_trace", "outgoing", "pipeline_trace"]
