"""Telemetry hooks: what the bus tells metrics and tracing, and nothing when they are off.

The engine calls one :class:`Telemetry` object (``EventBus.telemetry``) at each
event of a message's life: published, delivered, handler started and finished,
settled, dead-lettered; and when a broker connection goes down or comes back.
The base class does nothing, so the bus pays one no-op method call per event
when telemetry is off. :class:`Fanout` passes every event to several
(Prometheus metrics, OpenTelemetry traces). Labels are bounded on purpose:
broker, stream and consumer names, never subjects or payload data.

Implementations must not raise: a metrics or tracing fault never fails a message.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...providers.base import AckAction, Delivery


@dataclass(frozen=True, slots=True)
class Labels:
    """Where a consumed message belongs (the only labels of consumer series)."""

    broker: str
    stream: str
    consumer: str


class Telemetry:
    """No-op hooks; subclasses override what they record."""

    def attach(self, bus: Any) -> None:
        """Called once by the EventBus that uses this telemetry (a metrics collector
        reads its brokers and consumers for the pending gauges)."""

    # -- publishing -------------------------------------------------------------
    def before_publish(
        self, headers: MutableMapping[str, str], parent: Mapping[str, str] | None = None
    ) -> Any:
        """A message is about to be published with ``headers`` (tracing adds its
        context there). ``parent``: trace context the caller carries (the step's
        input or the pipeline's trigger data), else the current one. Returns a token
        handed back to :meth:`after_publish`."""
        return None

    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        """``count`` messages were published to ``stream`` (or failed with ``error``)."""

    # -- consuming --------------------------------------------------------------
    def delivered(self, labels: Labels, delivery: Delivery) -> None:
        """A message was fetched (``delivery.delivery_count > 1``: a redelivery)."""

    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        """The pipeline for ``delivery`` starts; runs in the handler's own task, so a
        tracer may make its span current here. Returns a token for
        :meth:`handler_finished`."""
        return None

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        """The pipeline ended after ``seconds`` (``error`` when it failed)."""

    def settled(self, labels: Labels, action: AckAction, count: int = 1) -> None:
        """Messages were acked, nak'd, terminated or marked in progress."""

    def dead_lettered(self, labels: Labels) -> None:
        """A message was copied to the dead letters (then terminated)."""

    def trigger_fields(self) -> Mapping[str, str]:
        """Extra trigger data for the running pipeline (tracing: ``trace_id``,
        ``traceparent``); called inside the handler, after :meth:`handler_started`."""
        return {}

    # -- brokers ------------------------------------------------------------------
    def broker_state(self, broker: str, up: bool) -> None:
        """A broker connection came up or went down."""

    def close(self) -> None:
        """Flush and release (exporters, listeners); idempotent. May block: owners
        inside an event loop await :meth:`aclose` instead."""

    async def aclose(self) -> None:
        """:meth:`close` without holding up the event loop, and wait for what the
        telemetry runs on it (refresh tasks) to end."""
        self.close()

    async def aflush(self, timeout: float) -> None:
        """Export what is queued within ``timeout`` seconds (traces before a process
        that may be killed soon answers its stop request)."""


OFF = Telemetry()


class Fanout(Telemetry):
    """Every event to each of ``parts`` (tokens are kept per part)."""

    def __init__(self, parts: Sequence[Telemetry]) -> None:
        self.parts = tuple(parts)

    def attach(self, bus: Any) -> None:
        for part in self.parts:
            part.attach(bus)

    def before_publish(
        self, headers: MutableMapping[str, str], parent: Mapping[str, str] | None = None
    ) -> Any:
        return tuple(p.before_publish(headers, parent) for p in self.parts)

    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        for part, own in zip(self.parts, token, strict=True):
            part.after_publish(own, broker, stream, count, error)

    def delivered(self, labels: Labels, delivery: Delivery) -> None:
        for part in self.parts:
            part.delivered(labels, delivery)

    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        return tuple(p.handler_started(labels, delivery) for p in self.parts)

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        for part, own in zip(self.parts, token, strict=True):
            part.handler_finished(own, labels, seconds, error)

    def settled(self, labels: Labels, action: AckAction, count: int = 1) -> None:
        for part in self.parts:
            part.settled(labels, action, count)

    def dead_lettered(self, labels: Labels) -> None:
        for part in self.parts:
            part.dead_lettered(labels)

    def trigger_fields(self) -> Mapping[str, str]:
        fields: dict[str, str] = {}
        for part in self.parts:
            fields.update(part.trigger_fields())
        return fields

    def broker_state(self, broker: str, up: bool) -> None:
        for part in self.parts:
            part.broker_state(broker, up)

    def close(self) -> None:
        for part in self.parts:
            part.close()

    async def aclose(self) -> None:
        for part in self.parts:
            await part.aclose()

    async def aflush(self, timeout: float) -> None:
        for part in self.parts:
            await part.aflush(timeout)


def combine(parts: Sequence[Telemetry | None]) -> Telemetry:
    """One Telemetry for the parts that are on (OFF when none is)."""
    on = [p for p in parts if p is not None]
    if not on:
        return OFF
    return on[0] if len(on) == 1 else Fanout(on)


__all__ = ["OFF", "Fanout", "Labels", "Telemetry", "combine"]
