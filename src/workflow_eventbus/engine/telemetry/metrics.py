"""Prometheus metrics of the bus (being written: see issue 17)."""

from __future__ import annotations

from collections.abc import Mapping

from . import Telemetry


def metrics_from_environ(environ: Mapping[str, str]) -> Telemetry | None:
    """The metrics telemetry ``EVENTBUS_METRICS_ADDR`` asks for, or None when unset."""
    return None
