"""Prometheus metrics of the bus: counters per event, a handler histogram, consumer gauges.

:class:`Metrics` is a :class:`~workflow_eventbus.engine.telemetry.Telemetry` that
records every hook the engine calls into its own ``CollectorRegistry`` (never the
process-global one, so two buses or two tests in one process keep apart). The
series and their labels are in :data:`SERIES`; labels are the broker, stream and
consumer names only, never subjects, headers, payloads or error texts, so the
number of series is bounded by the app config.

Where the work happens:

* hooks (the hot paths, on the event loop): plain numbers on one object per
  :class:`Labels` (found by identity first: a subscription passes the same Labels
  every time); a collector turns them into metric families when a scrape collects
  the registry. A consumed message's four hooks cost ~3 us more than with telemetry
  off through prometheus_client's labelled children, ~0.5 us this way;
* ``/metrics`` (``serve``): a thread of its own, see metrics_http.py;
* ``eventbus_broker_up``: set by ``broker_state()`` as each broker module reports
  its connection (started, lost, restored, stopped);
* consumer pending counts (``eventbus_consumer_pending``/``_ack_pending``): an
  asyncio task on the bus's loop refreshes them every ``refresh_interval`` seconds
  (each broker call bounded by ``REFRESH_TIMEOUT``) from the providers' optional
  pending capability (``HasPending``); it also sets ``eventbus_broker_up`` from the
  provider's ``connected`` for a broker that never reported its state. A scrape
  reads the last values and never waits for a broker. A consumer whose count cannot
  be read loses its gauges until it can be.

``close()`` stops the HTTP server, joins its thread and cancels the refresh task;
the hook interface's ``close()`` is synchronous, so ``aclose()`` does the same and
also awaits the task's end.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from ...core.errors import ConfigError, EventbusError
from ...core.lifecycle import cancel_and_wait
from ...providers.base import AckAction, Delivery, HasPending
from . import Labels, Telemetry
from .metrics_http import ADDR_ENV, MetricsServer, parse_addr

if TYPE_CHECKING:
    from ..bus import EventBus

log = logging.getLogger("workflow_eventbus.engine.telemetry.metrics")

REFRESH_INTERVAL = 5.0  # seconds between refreshes of the pending and broker_up gauges
REFRESH_TIMEOUT = 2.0  # seconds one broker gets to answer a pending count
HANDLER_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

CONSUMER = ("broker", "stream", "consumer")
PUBLISH = ("broker", "stream")
BROKER = ("broker",)

# name -> (kind, labels, help). The names are what Prometheus stores; the dashboard
# test checks every metric it queries against this table.
SERIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "eventbus_published_total": ("counter", PUBLISH, "Messages the broker confirmed."),
    "eventbus_publish_errors_total": (
        "counter",
        PUBLISH,
        "Messages whose publish failed (stream empty when the broker named none).",
    ),
    "eventbus_delivered_total": ("counter", CONSUMER, "Messages fetched by a trigger."),
    "eventbus_redelivered_total": (
        "counter",
        CONSUMER,
        "Fetched messages with a delivery count above 1.",
    ),
    "eventbus_acked_total": ("counter", CONSUMER, "Messages acknowledged."),
    "eventbus_nacked_total": ("counter", CONSUMER, "Messages nak'd (redelivered later)."),
    "eventbus_terminated_total": (
        "counter",
        CONSUMER,
        "Messages terminated (never redelivered; includes the dead-lettered ones).",
    ),
    "eventbus_in_progress_total": (
        "counter",
        CONSUMER,
        "In-progress signals sent for long-running messages.",
    ),
    "eventbus_dead_lettered_total": (
        "counter",
        CONSUMER,
        "Messages copied to the dead letters after max_deliver attempts.",
    ),
    "eventbus_handler_errors_total": ("counter", CONSUMER, "Pipelines that failed."),
    "eventbus_handler_seconds": (
        "histogram",
        CONSUMER,
        "Pipeline time per message (in the plugin: the TriggerWorkflow round trip).",
    ),
    "eventbus_in_flight": ("gauge", CONSUMER, "Pipelines running now."),
    "eventbus_consumer_pending": (
        "gauge",
        CONSUMER,
        "Messages of the consumer not yet delivered (refreshed periodically).",
    ),
    "eventbus_consumer_ack_pending": (
        "gauge",
        CONSUMER,
        "Messages delivered to the consumer and not yet settled (refreshed periodically).",
    ),
    "eventbus_broker_up": ("gauge", BROKER, "1 while the broker connection is usable."),
}


def metrics_from_environ(environ: Mapping[str, str]) -> Metrics | None:
    """The metrics ``EVENTBUS_METRICS_ADDR`` (``host:port``) asks for, serving /metrics
    there; None when it is unset or empty. Also exports the process's own series
    (``process_*``, ``python_info``)."""
    raw = environ.get(ADDR_ENV, "").strip()
    if not raw:
        return None
    host, port = parse_addr(raw)
    metrics = Metrics(process=True)
    try:
        metrics.serve(host, port)
    except ConfigError:
        metrics.close()
        raise
    return metrics


# The hot-path counters of a consumer: SERIES name -> attribute of _Consumer.
CONSUMER_COUNTERS = {
    "eventbus_delivered_total": "delivered",
    "eventbus_redelivered_total": "redelivered",
    "eventbus_acked_total": "acked",
    "eventbus_nacked_total": "nacked",
    "eventbus_terminated_total": "terminated",
    "eventbus_in_progress_total": "in_progress",
    "eventbus_dead_lettered_total": "dead_lettered",
    "eventbus_handler_errors_total": "errors",
}


class _Consumer:
    """What the hooks count for one (broker, stream, consumer): plain numbers.

    Only the bus's event loop writes them; a scrape thread reads them (an int or
    float attribute is read whole under the GIL). ``buckets[i]`` counts handler
    times in (HANDLER_BUCKETS[i-1], HANDLER_BUCKETS[i]], the last one above them all."""

    __slots__ = (*CONSUMER_COUNTERS.values(), "buckets", "in_flight", "seconds", "values")

    def __init__(self, labels: Labels) -> None:
        self.values = (labels.broker, labels.stream, labels.consumer)
        self.delivered = self.redelivered = self.acked = self.nacked = 0
        self.terminated = self.in_progress = self.dead_lettered = self.errors = 0
        self.in_flight = 0
        self.buckets = [0] * (len(HANDLER_BUCKETS) + 1)
        self.seconds = 0.0


class _Publisher:
    __slots__ = ("errors", "published", "values")

    def __init__(self, values: tuple[str, str]) -> None:
        self.values = values
        self.published = self.errors = 0


class _HotPathCollector(Collector):
    """Renders the hook counts as metric families when the registry is collected
    (a scrape): the hot paths add to numbers and never touch prometheus_client."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        publishers = list(m._publishers.values())
        consumers = list(m._consumers.values())
        published, errors, *counters, handler, in_flight = families = self._families()
        for pub in publishers:
            published.add_metric(pub.values, pub.published)
            errors.add_metric(pub.values, pub.errors)
        for c in consumers:
            for family, attribute in zip(counters, CONSUMER_COUNTERS.values(), strict=True):
                family.add_metric(c.values, getattr(c, attribute))
            cumulative = list(itertools.accumulate(c.buckets))
            handler.add_metric(
                c.values, list(zip(_BUCKET_NAMES, cumulative, strict=True)), c.seconds
            )
            in_flight.add_metric(c.values, c.in_flight)
        return families

    @staticmethod
    def _families() -> list[Any]:
        def counter(name: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, SERIES[name][2], labels=SERIES[name][1])

        handler = "eventbus_handler_seconds"
        return [
            counter("eventbus_published_total"),
            counter("eventbus_publish_errors_total"),
            *(counter(name) for name in CONSUMER_COUNTERS),
            HistogramMetricFamily(handler, SERIES[handler][2], labels=CONSUMER),
            GaugeMetricFamily(
                "eventbus_in_flight", SERIES["eventbus_in_flight"][2], labels=CONSUMER
            ),
        ]


_BUCKET_NAMES = [*(repr(float(b)) for b in HANDLER_BUCKETS), "+Inf"]  # 0.0005, 1.0, ...


class Metrics(Telemetry):
    """Prometheus series for one bus (see the module docstring and :data:`SERIES`)."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        process: bool = False,
    ) -> None:
        """``registry``: where the series go (a new one by default); ``process``: also
        the process's CPU, memory and Python version series."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.refresh_interval = refresh_interval
        self._consumers: dict[Labels, _Consumer] = {}
        self._last: tuple[Labels | None, _Consumer | None] = (None, None)
        self._publishers: dict[tuple[str, str], _Publisher] = {}
        self.registry.register(_HotPathCollector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

        def gauge(name: str) -> Gauge:
            _, labels, text = SERIES[name]
            return Gauge(name, text, labels, registry=self.registry)

        # Refreshed periodically, off the hot paths: prometheus_client gauges.
        self.pending = gauge("eventbus_consumer_pending")
        self.ack_pending = gauge("eventbus_consumer_ack_pending")
        self.broker_up = gauge("eventbus_broker_up")
        self._watched: set[Labels] = set()  # consumers whose pending gauges exist
        self._failing: set[Labels] = set()
        self._reported: set[str] = set()  # brokers whose state broker_state() told
        self._bus: EventBus | None = None
        self._want_refresh = False  # attached, refresh task not started yet
        self._refresher: asyncio.Task[None] | None = None
        self._server: MetricsServer | None = None
        self.address: tuple[str, int] | None = None  # where /metrics is served
        self._closed = False

    def names(self) -> frozenset[str]:
        """Every sample name the registry can expose, with the type's suffixes
        (``_total``; ``_bucket``, ``_sum``, ``_count``; ``_info``), series with no
        labelled child yet included: what a query or a dashboard may name."""
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "info": ("_info",),
        }
        found: set[str] = set()
        for family in self.registry.collect():
            found.update(family.name + s for s in suffixes.get(family.type, ("",)))
            found.update(sample.name for sample in family.samples)
        return frozenset(found)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` until :meth:`close` (see metrics_http.py);
        returns the bound address. A bad address is a ConfigError."""
        server = MetricsServer(self.registry)
        self.address = server.start(host, port)
        self._server = server
        return self.address

    # -- publishing ---------------------------------------------------------------
    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        if self._want_refresh:
            self._start_refresh()
        key = (broker, stream)
        pub = self._publishers.get(key)
        if pub is None:
            pub = self._publishers[key] = _Publisher(key)
        if error is None:
            pub.published += count
        else:
            pub.errors += count

    # -- consuming ----------------------------------------------------------------
    def _series(self, labels: Labels) -> _Consumer:
        last_labels, last = self._last
        if labels is last_labels and last is not None:
            return last  # a subscription passes the same Labels object every time
        series = self._consumers.get(labels)
        if series is None:
            series = self._consumers[labels] = _Consumer(labels)
        self._last = (labels, series)
        return series

    def delivered(self, labels: Labels, delivery: Delivery) -> None:
        if self._want_refresh:
            self._start_refresh()
        series = self._series(labels)
        series.delivered += 1
        if delivery.delivery_count > 1:
            series.redelivered += 1

    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        series = self._series(labels)
        series.in_flight += 1
        return series

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        series = token if isinstance(token, _Consumer) else self._series(labels)
        series.in_flight -= 1
        series.buckets[bisect.bisect_left(HANDLER_BUCKETS, seconds)] += 1
        series.seconds += seconds
        if error is not None:
            series.errors += 1

    def settled(self, labels: Labels, action: AckAction, count: int = 1) -> None:
        series = self._series(labels)
        if action is AckAction.ACK:
            series.acked += count
        elif action is AckAction.NAK:
            series.nacked += count
        elif action is AckAction.TERM:
            series.terminated += count
        elif action is AckAction.IN_PROGRESS:
            series.in_progress += count

    def dead_lettered(self, labels: Labels) -> None:
        self._series(labels).dead_lettered += 1

    # -- brokers --------------------------------------------------------------------
    def broker_state(self, broker: str, up: bool) -> None:
        self._reported.add(broker)  # the refresh leaves this broker's gauge alone now
        self.broker_up.labels(broker).set(1 if up else 0)

    # -- the refresh task -----------------------------------------------------------
    def attach(self, bus: Any) -> None:
        """Watch ``bus``: its brokers and consumer modules, and the triggers the hooks
        report. The refresh task starts now when a loop is running, else on the first
        publish or delivery (a library bus may be built before its loop runs)."""
        self._bus = bus
        self._want_refresh = not self._closed and self._refresher is None
        if self._want_refresh:
            self._start_refresh()

    def _start_refresh(self) -> None:
        """One refresh task per Metrics (on the loop of the first event); it reads
        ``self._bus`` each round, so a later attach needs no second one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._want_refresh = False
        self._refresher = loop.create_task(self._refresh_loop(), name="eventbus metrics refresh")

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

    async def refresh(self) -> None:
        """Read broker state and pending counts now (the refresh task calls this)."""
        bus = self._bus
        if bus is None:
            return
        try:
            for name, module in list(bus.brokers.items()):
                if name not in self._reported:  # no broker_state() for it: ask the provider
                    self.broker_up.labels(name).set(1 if _connected(module) else 0)
            watched = self._consumers_to_watch(bus)
            results = await asyncio.gather(
                *(self._count(bus, labels) for labels in watched), return_exceptions=True
            )
            for labels, counts in zip(watched, results, strict=True):
                if counts is None or isinstance(counts, BaseException):
                    self._forget(labels)
                    continue
                self.pending.labels(labels.broker, labels.stream, labels.consumer).set(counts[0])
                self.ack_pending.labels(labels.broker, labels.stream, labels.consumer).set(
                    counts[1]
                )
                self._watched.add(labels)
            for labels in self._watched - set(watched):
                self._forget(labels)
        except Exception:  # a metrics fault never stops the bus; try again next time
            log.exception("metrics: refresh failed")

    def _consumers_to_watch(self, bus: EventBus) -> list[Labels]:
        """The triggers the hooks saw, and the started consumer modules."""
        found = dict.fromkeys(self._consumers)
        for module in list(bus.consumers.values()):
            if not module.started:
                continue
            cfg = module.config
            try:
                broker = bus.broker(cfg.broker_ref).name
            except EventbusError:
                continue
            found[Labels(broker, cfg.stream_name, cfg.name)] = None
        return list(found)

    async def _count(self, bus: EventBus, labels: Labels) -> tuple[int, int] | None:
        module = bus.brokers.get(labels.broker)
        if module is None:
            return None
        try:
            provider = module.provider
        except EventbusError:
            return None
        if not isinstance(provider, HasPending):
            return None
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                counts = await provider.pending(labels.stream, labels.consumer)
        except (EventbusError, TimeoutError) as exc:
            if labels not in self._failing:
                self._failing.add(labels)
                log.warning(
                    "metrics: pending counts of %s/%s on %s unavailable: %s",
                    labels.stream,
                    labels.consumer,
                    labels.broker,
                    exc or "timed out",
                )
            return None
        self._failing.discard(labels)
        return counts

    def _forget(self, labels: Labels) -> None:
        if labels in self._watched:
            self._watched.discard(labels)
            values = (labels.broker, labels.stream, labels.consumer)
            for gauge in (self.pending, self.ack_pending):
                with contextlib.suppress(KeyError):
                    gauge.remove(*values)

    # -- ending -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the listener (joins its thread) and cancel the refresh task; idempotent."""
        self._closed = True
        self._want_refresh = False
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def aclose(self) -> None:
        """:meth:`close` (its thread join in a worker thread, not on the loop), then wait
        until the refresh task has ended."""
        task = self._refresher
        await asyncio.to_thread(self.close)
        if task is not None:
            await cancel_and_wait(task)


def _connected(module: Any) -> bool:
    try:
        return bool(module.provider.connected)
    except EventbusError:  # not started, degraded (no URL) or stopped
        return False
