"""The plugin process's telemetry, as its environment asks for it.

``EVENTBUS_METRICS_ADDR`` turns Prometheus metrics on (engine/telemetry/metrics.py);
the standard ``OTEL_*`` variables turn OpenTelemetry traces on
(engine/telemetry/tracing.py). With neither, the bus runs with telemetry OFF.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..engine.telemetry import Telemetry, combine
from ..engine.telemetry.metrics import metrics_from_environ
from ..engine.telemetry.tracing import tracing_from_environ


def telemetry_from_environ(environ: Mapping[str, str]) -> Telemetry:
    # Tracing first: it only reads settings, while metrics open a listener that a
    # refused tracing setting after it would leave running.
    tracing = tracing_from_environ(environ)
    return combine([metrics_from_environ(environ), tracing])
