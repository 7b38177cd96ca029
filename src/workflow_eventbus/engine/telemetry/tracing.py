"""OpenTelemetry traces of the bus: a producer span per publish, a consumer span per delivery.

Publishing writes the W3C ``traceparent`` (and ``tracestate`` when there is one)
of its producer span into the message headers. Its parent is, in this order:
the ``parent`` carrier the caller hands to ``before_publish`` (the publish step
passes the pipeline's trace context, engine/telemetry/context.py), a
``traceparent`` already in the outgoing headers, else the current context.

Each delivery gets a consumer span, the child of the context in its headers (a
message without one starts a new trace). It is made current in the handler's task
for the pipeline's run, and :meth:`Tracing.trigger_fields` puts its ``trace_id``
and ``traceparent`` into the trigger data: a pipeline that publishes again (in
the library, or through ExecuteStep of the plugin) continues the same trace.

Spans are exported over OTLP/gRPC by a BatchSpanProcessor on a TracerProvider of
our own (the process-wide one is left alone). :func:`tracing_from_environ` turns
it on only when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and ``OTEL_SDK_DISABLED`` is not true;
otherwise nothing is built and the SDK and the exporter are never imported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..._version import __version__
from ...core.defaults import DEFAULT_TRACES_SERVICE_NAME
from ...core.errors import ConfigError, redact
from ...core.headers import MSG_ID_HEADER
from ...providers.base import Delivery
from . import Labels, Telemetry
from .context import outgoing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("workflow_eventbus.engine.telemetry.tracing")

SCOPE = "workflow_eventbus"

# Messaging semantic conventions (attribute names as the specification spells them).
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
MESSAGE_ID = "messaging.message.id"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
CONSUMER_GROUP = "messaging.consumer.group.name"
BODY_SIZE = "messaging.message.body.size"
BATCH_COUNT = "messaging.batch.message_count"
# Ours: the bus's own names (bounded: module, stream and consumer names).
BROKER = "eventbus.broker"
STREAM = "eventbus.stream"
SEQUENCE = "eventbus.sequence"
DELIVERY_COUNT = "eventbus.delivery_count"

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_PROTOCOL_VARS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_HEADERS_VARS = ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
_INSECURE_VARS = ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")
_BSP_VARS = {  # variable -> BatchSpanProcessor argument (milliseconds or counts)
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
}


@dataclass(frozen=True)
class TracingSettings:
    """What the environment asks of the exporter (see :func:`tracing_settings`)."""

    endpoint: str
    service_name: str = DEFAULT_TRACES_SERVICE_NAME
    insecure: bool | None = None  # None: http:// is plain text, https:// and host:port TLS
    headers: str | None = field(default=None, repr=False)  # may hold credentials
    batch: Mapping[str, int] = field(default_factory=dict)  # BatchSpanProcessor arguments


def tracing_settings(environ: Mapping[str, str]) -> TracingSettings | None:
    """The exporter settings the OTEL_* variables of ``environ`` ask for; None when
    traces are off (no endpoint, ``OTEL_SDK_DISABLED=true`` or
    ``OTEL_TRACES_EXPORTER=none``). A value we cannot honour is a ConfigError."""
    if _flag(environ, "OTEL_SDK_DISABLED"):
        return None
    name, endpoint = _first_set(environ, _ENDPOINT_VARS)
    if not endpoint:
        return None
    exporters = {
        part.strip().lower()
        for part in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if part.strip()
    }
    if exporters == {"none"}:
        return None
    if exporters - {"otlp"}:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER",
            "this plugin exports traces over OTLP only",
            value=environ["OTEL_TRACES_EXPORTER"],
            fix="set otlp (or none to turn traces off), or unset it",
        )
    protocol_var, protocol = _first_set(environ, _PROTOCOL_VARS)
    if protocol and protocol.strip().lower() != "grpc":
        raise ConfigError(
            protocol_var,
            "this plugin exports traces over OTLP/gRPC only",
            value=protocol,
            fix="set grpc (or unset it) and point the endpoint at the collector's gRPC "
            "port (4317 by default)",
        )
    _check_endpoint(name, endpoint.strip())
    insecure = next(
        (f for f in (_flag(environ, var) for var in _INSECURE_VARS) if f is not None), None
    )
    batch = {arg: n for var, arg in _BSP_VARS.items() if (n := _count(environ, var)) is not None}
    return TracingSettings(
        endpoint=endpoint.strip(),
        service_name=environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_TRACES_SERVICE_NAME,
        insecure=insecure,
        headers=_first_set(environ, _HEADERS_VARS)[1] or None,
        batch=batch,
    )


def tracing_from_environ(environ: Mapping[str, str]) -> Tracing | None:
    """The tracing telemetry the OTEL_* variables ask for, or None when off."""
    settings = tracing_settings(environ)
    if settings is None:
        return None
    tracing = Tracing(build_provider(settings))
    log.info(
        "traces: exporting over OTLP/gRPC to %s as service %r",
        redact(settings.endpoint),
        settings.service_name,
    )
    return tracing


def build_provider(settings: TracingSettings) -> TracerProvider:
    """A TracerProvider of our own exporting through a BatchSpanProcessor over OTLP/gRPC.

    The SDK still reads from the process environment what ``settings`` leaves out:
    the sampler (``OTEL_TRACES_SAMPLER``), resource attributes
    (``OTEL_RESOURCE_ATTRIBUTES``), the exporter's timeout, compression and TLS files."""
    # Imported here: a bus with traces off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": __version__}
    )
    # Shut down by Tracing.close(), its owner, not by an exit hook of the SDK.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint, insecure=settings.insecure, headers=settings.headers
    )
    batch = settings.batch
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=batch.get("max_queue_size"),
        schedule_delay_millis=batch.get("schedule_delay_millis"),
        max_export_batch_size=batch.get("max_export_batch_size"),
        export_timeout_millis=batch.get("export_timeout_millis"),
    )
    provider.add_span_processor(processor)
    return provider


class Tracing(Telemetry):
    """Producer and consumer spans on ``provider``, which :meth:`close` shuts down."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(SCOPE, __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._bus: Any = None
        self._systems: dict[str, str] = {}  # broker module name -> provider name
        self._faults: set[str] = set()
        self._closed = False

    def attach(self, bus: Any) -> None:
        self._bus = bus

    # -- publishing -------------------------------------------------------------
    def before_publish(
        self, headers: MutableMapping[str, str], parent: Mapping[str, str] | None = None
    ) -> Any:
        try:
            attributes: dict[str, str | int] = {
                OPERATION_NAME: "publish",
                OPERATION_TYPE: "send",
            }
            message = outgoing()
            if message is not None:
                attributes[DESTINATION] = message.subject
                attributes[BODY_SIZE] = len(message.payload)
                if message.msg_id:
                    attributes[MESSAGE_ID] = message.msg_id
            span = self._tracer.start_span(
                "publish",
                context=self._parent(parent, headers),
                kind=SpanKind.PRODUCER,
                attributes=attributes,
            )
            # The message carries its own producer span; a tracestate of the previous
            # hop must not outlive the traceparent it went with.
            headers.pop("tracestate", None)
            self._propagator.inject(headers, context=trace.set_span_in_context(span))
            return span
        except Exception as exc:
            self._fault("before_publish", exc)
            return None

    def _parent(
        self, parent: Mapping[str, str] | None, headers: Mapping[str, str]
    ) -> Context | None:
        """The first valid trace context of ``parent``, then ``headers``; None = current."""
        for carrier in (parent, headers):
            if carrier and carrier.get("traceparent"):
                found = self._propagator.extract(carrier, context=Context())
                if trace.get_current_span(found).get_span_context().is_valid:
                    return found
        return None

    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        if token is None:
            return
        try:
            span = token
            attributes: dict[str, str | int] = {BROKER: broker}
            system = self._system(broker)
            if system:
                attributes[SYSTEM] = system
            if stream:
                attributes[STREAM] = stream
                span.update_name(f"publish {stream}")
            if count != 1:
                attributes[BATCH_COUNT] = count
            span.set_attributes(attributes)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        except Exception as exc:
            self._fault("after_publish", exc)

    # -- consuming --------------------------------------------------------------
    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        try:
            headers = delivery.headers
            parent = (
                self._propagator.extract(headers, context=Context())
                if "traceparent" in headers
                else Context()  # no context in the message: a new trace
            )
            attributes: dict[str, str | int] = {
                OPERATION_NAME: "process",
                OPERATION_TYPE: "process",
                DESTINATION: delivery.subject,
                MESSAGE_ID: headers.get(MSG_ID_HEADER) or str(delivery.sequence),
                CONSUMER_GROUP: labels.consumer,
                BODY_SIZE: len(delivery.payload),
                BROKER: labels.broker,
                STREAM: delivery.stream,
                SEQUENCE: delivery.sequence,
                DELIVERY_COUNT: delivery.delivery_count,
            }
            system = self._system(labels.broker)
            if system:
                attributes[SYSTEM] = system
            span = self._tracer.start_span(
                f"process {delivery.stream}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            # Current for the pipeline: this runs in the handler's own task.
            mark = otel_context.attach(trace.set_span_in_context(span))
            return span, mark
        except Exception as exc:
            self._fault("handler_started", exc)
            return None

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        if token is None:
            return
        try:
            span, mark = token
            otel_context.detach(mark)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()
        except Exception as exc:
            self._fault("handler_finished", exc)

    def trigger_fields(self) -> Mapping[str, str]:
        """``trace_id`` and ``traceparent`` (and ``tracestate`` when set) of the
        consumer span that :meth:`handler_started` made current."""
        try:
            span_context = trace.get_current_span().get_span_context()
            if not span_context.is_valid:
                return {}
            fields = {"trace_id": trace.format_trace_id(span_context.trace_id)}
            self._propagator.inject(fields)
            return fields
        except Exception as exc:
            self._fault("trigger_fields", exc)
            return {}

    # -- the rest ---------------------------------------------------------------
    def _system(self, broker: str) -> str:
        """The provider name of broker module ``broker`` (``messaging.system``)."""
        system = self._systems.get(broker)
        if system is None:
            brokers = getattr(self._bus, "brokers", None) or {}
            module = brokers.get(broker)
            if module is None:
                return ""  # not registered (yet): look again next time
            system = str(module.spec.name)
            self._systems[broker] = system
        return system

    def _fault(self, hook: str, exc: Exception) -> None:
        # Tracing never fails a message; the first fault of each hook is worth a warning.
        level = logging.DEBUG if hook in self._faults else logging.WARNING
        self._faults.add(hook)
        log.log(level, "traces: %s failed: %s: %s", hook, type(exc).__name__, exc)

    async def aflush(self, timeout: float) -> None:
        """Export the queued spans, waiting at most ``timeout`` seconds (in a worker
        thread: the exporter blocks)."""
        if not self._closed:
            await asyncio.to_thread(self.provider.force_flush, max(int(timeout * 1000), 1))

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread, so a slow collector holds up no message."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Export what is queued and shut the provider down (idempotent). Blocks until
        the last export ends: at most the exporter's timeout per batch when the
        collector does not answer."""
        if self._closed:
            return
        self._closed = True
        try:
            self.provider.shutdown()
        except Exception as exc:
            log.warning("traces: shutting the exporter down failed: %s", exc)


def _first_set(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str]:
    """The first of ``names`` set to a non-blank value, and that value ("" for none)."""
    for name in names:
        value = environ.get(name, "")
        if value.strip():
            return name, value
    return names[-1], ""


def _flag(environ: Mapping[str, str], name: str) -> bool | None:
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("true", "false"):
        return value == "true"
    raise ConfigError(name, "must be true or false", value=environ[name], fix="set true or false")


def _count(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number <= 0:
        unit = "a count" if name.endswith("SIZE") else "milliseconds"
        raise ConfigError(
            name,
            "must be a positive whole number",
            value=environ[name],
            fix=f"set {unit}, e.g. {5000 if unit == 'milliseconds' else 512}, or unset it",
        )
    return number


def _check_endpoint(name: str, endpoint: str) -> None:
    """``http://host:port``, ``https://host:port`` or ``host:port``; else a ConfigError."""
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    else:
        host, _, port = endpoint.rpartition(":")
        ok = bool(host) and port.isdigit()
    if not ok:
        raise ConfigError(
            name,
            "is not an OTLP/gRPC endpoint",
            value=redact(endpoint),
            fix="use http://host:4317 (plain text), https://host:4317 (TLS) or host:port",
        )


__all__ = [
    "Tracing",
    "TracingSettings",
    "build_provider",
    "tracing_from_environ",
    "tracing_settings",
]
