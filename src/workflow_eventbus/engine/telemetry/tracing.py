"""OpenTelemetry traces of the bus (being written: see issue 17)."""

from __future__ import annotations

from collections.abc import Mapping

from . import Telemetry


def tracing_from_environ(environ: Mapping[str, str]) -> Telemetry | None:
    """The tracing telemetry the OTEL_* variables ask for, or None when off."""
    return None
