"""Prometheus metrics of the bus: counters per event, a handler histogram, consumer gauges.

:class:`Metrics` is a :class:`~workflow_eventbus.engine.telemetry.Telemetry` that
records every hook the engine calls into its own ``CollectorRegistry`` (never the
process-global one, so two buses or two tests in one process keep apart). The
series and their labels are in :data:`SERIES`; labels are the broker, stream and
consumer names only, never subjects, headers, payloads or error texts, so the
number of series is bounded by the app config.

Where the work happens:

* hooks (the hot paths, on the event loop): one cached set of label children per
  :class:`Labels` (a ``labels()`` lookup costs about as much as the increment), so
  an event is one dict or identity check plus the increments;
* ``/metrics`` (``serve``): prometheus_client's WSGI app on a threading HTTP server
  in a thread this object owns. A thread rather than an asyncio server because a
  scrape then never waits for the event loop (a busy or stalled loop still answers
  scrapes, and rendering the text takes no loop time from messages); the values are
  lock-protected in prometheus_client, so reading them from another thread is safe;
* consumer pending counts (``eventbus_consumer_pending``/``_ack_pending``) and
  ``eventbus_broker_up``: an asyncio task on the bus's loop refreshes them every
  ``refresh_interval`` seconds (each broker call bounded by ``REFRESH_TIMEOUT``),
  from the providers' optional pending capability (``HasPending``) and the
  providers' ``connected``. A scrape reads the last values and never waits for a
  broker. A consumer whose count cannot be read loses its gauges until it can be.

``close()`` stops the HTTP server, joins its thread and cancels the refresh task;
the hook interface's ``close()`` is synchronous, so ``aclose()`` does the same and
also awaits the task's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)

from ...core.errors import ConfigError, EventbusError
from ...core.lifecycle import cancel_and_wait
from ...providers.base import AckAction, Delivery, HasPending
from . import Labels, Telemetry

if TYPE_CHECKING:
    from ..bus import EventBus

log = logging.getLogger("workflow_eventbus.engine.telemetry.metrics")

ADDR_ENV = "EVENTBUS_METRICS_ADDR"
PATH = "/metrics"
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
    (``process_*``, ``python_info``) and, since the plugin owns its process, turns
    off prometheus_client's ``*_created`` series process-wide."""
    raw = environ.get(ADDR_ENV, "").strip()
    if not raw:
        return None
    host, port = parse_addr(raw)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = Metrics(process=True)
    try:
        metrics.serve(host, port)
    except ConfigError:
        metrics.close()
        raise
    return metrics


def parse_addr(raw: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every IPv4 interface); port 0 picks
    a free one (the log line says which)."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise _addr_error(raw, "is not host:port")
        host, port_text = raw[1:end], raw[end + 2 :]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or ":" in host:
            raise _addr_error(raw, "is not host:port (an IPv6 host goes in brackets)")
    if not port_text.isdigit():
        raise _addr_error(raw, "has no numeric port")
    port = int(port_text)
    if port > 65535:
        raise _addr_error(raw, "has a port above 65535")
    return host or "0.0.0.0", port


def _addr_error(raw: str, problem: str) -> ConfigError:
    return ConfigError(
        ADDR_ENV,
        problem,
        value=raw,
        fix="set it to host:port (e.g. 127.0.0.1:9464, [::1]:9464 or :9464 for every "
        "interface), or unset it to turn metrics off",
    )


class _Consumer:
    """The label children of one (broker, stream, consumer): what the hooks touch."""

    __slots__ = (
        "acked",
        "dead_lettered",
        "delivered",
        "errors",
        "handler",
        "in_flight",
        "in_progress",
        "nacked",
        "redelivered",
        "terminated",
    )

    def __init__(self, m: Metrics, labels: Labels) -> None:
        values = (labels.broker, labels.stream, labels.consumer)
        self.delivered = m.delivered_total.labels(*values)
        self.redelivered = m.redelivered_total.labels(*values)
        self.acked = m.acked_total.labels(*values)
        self.nacked = m.nacked_total.labels(*values)
        self.terminated = m.terminated_total.labels(*values)
        self.in_progress = m.in_progress_total.labels(*values)
        self.dead_lettered = m.dead_lettered_total.labels(*values)
        self.errors = m.handler_errors_total.labels(*values)
        self.handler = m.handler_seconds.labels(*values)
        self.in_flight = m.in_flight.labels(*values)


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
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

        def counter(name: str) -> Counter:
            _, labels, text = SERIES[name]
            return Counter(name.removesuffix("_total"), text, labels, registry=self.registry)

        def gauge(name: str) -> Gauge:
            _, labels, text = SERIES[name]
            return Gauge(name, text, labels, registry=self.registry)

        self.published_total = counter("eventbus_published_total")
        self.publish_errors_total = counter("eventbus_publish_errors_total")
        self.delivered_total = counter("eventbus_delivered_total")
        self.redelivered_total = counter("eventbus_redelivered_total")
        self.acked_total = counter("eventbus_acked_total")
        self.nacked_total = counter("eventbus_nacked_total")
        self.terminated_total = counter("eventbus_terminated_total")
        self.in_progress_total = counter("eventbus_in_progress_total")
        self.dead_lettered_total = counter("eventbus_dead_lettered_total")
        self.handler_errors_total = counter("eventbus_handler_errors_total")
        _, labels, text = SERIES["eventbus_handler_seconds"]
        self.handler_seconds = Histogram(
            "eventbus_handler_seconds",
            text,
            labels,
            buckets=HANDLER_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = gauge("eventbus_in_flight")
        self.pending = gauge("eventbus_consumer_pending")
        self.ack_pending = gauge("eventbus_consumer_ack_pending")
        self.broker_up = gauge("eventbus_broker_up")

        self._consumers: dict[Labels, _Consumer] = {}
        self._last: tuple[Labels | None, _Consumer | None] = (None, None)
        self._publishers: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._watched: set[Labels] = set()  # consumers whose pending gauges exist
        self._failing: set[Labels] = set()
        self._bus: EventBus | None = None
        self._want_refresh = False  # attached, refresh task not started yet
        self._refresher: asyncio.Task[None] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
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

    # -- the HTTP listener --------------------------------------------------------
    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` from a thread; returns the bound address.

        A host that does not resolve or an address that cannot be bound is a
        ConfigError naming ``EVENTBUS_METRICS_ADDR``."""
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except OSError as exc:
            raise _addr_error(shown, f"names a host that does not resolve ({exc})") from exc

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True

        try:
            server = make_server(host, port, self._app(), Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(
                ADDR_ENV,
                f"cannot listen there ({exc.strerror or exc})",
                value=shown,
                fix="pick a free port on a local address (port 0: any free port)",
            ) from exc
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="eventbus metrics",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        bound = server.server_address
        bound_host = bound[0] if isinstance(bound[0], str) else bound[0].decode()
        self.address = (bound_host, int(bound[1]))
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("metrics: serving Prometheus text on http://%s:%d%s", shown, bound[1], PATH)
        return self.address

    def _app(self) -> Any:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "") in (PATH, PATH + "/"):
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {PATH}\n".encode()]

        return app

    # -- publishing ---------------------------------------------------------------
    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        if self._want_refresh:
            self._start_refresh()
        key = (broker, stream)
        pair = self._publishers.get(key)
        if pair is None:
            pair = (self.published_total.labels(*key), self.publish_errors_total.labels(*key))
            self._publishers[key] = pair
        (pair[0] if error is None else pair[1]).inc(count)

    # -- consuming ----------------------------------------------------------------
    def _series(self, labels: Labels) -> _Consumer:
        last_labels, last = self._last
        if labels is last_labels and last is not None:
            return last
        series = self._consumers.get(labels)
        if series is None:
            series = self._consumers[labels] = _Consumer(self, labels)
        self._last = (labels, series)
        return series

    def delivered(self, labels: Labels, delivery: Delivery) -> None:
        if self._want_refresh:
            self._start_refresh()
        series = self._series(labels)
        series.delivered.inc()
        if delivery.delivery_count > 1:
            series.redelivered.inc()

    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        series = self._series(labels)
        series.in_flight.inc()
        return series

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        series = token if isinstance(token, _Consumer) else self._series(labels)
        series.in_flight.dec()
        series.handler.observe(seconds)
        if error is not None:
            series.errors.inc()

    def settled(self, labels: Labels, action: AckAction, count: int = 1) -> None:
        series = self._series(labels)
        if action is AckAction.ACK:
            series.acked.inc(count)
        elif action is AckAction.NAK:
            series.nacked.inc(count)
        elif action is AckAction.TERM:
            series.terminated.inc(count)
        elif action is AckAction.IN_PROGRESS:
            series.in_progress.inc(count)

    def dead_lettered(self, labels: Labels) -> None:
        self._series(labels).dead_lettered.inc()

    # -- brokers --------------------------------------------------------------------
    def broker_state(self, broker: str, up: bool) -> None:
        self.broker_up.labels(broker).set(1 if up else 0)

    # -- the refresh task -----------------------------------------------------------
    def attach(self, bus: Any) -> None:
        """Watch ``bus``: its brokers and consumer modules, and the triggers the hooks
        report. The refresh task starts now when a loop is running, else on the first
        publish or delivery (a library bus may be built before its loop runs)."""
        self._bus = bus
        self._want_refresh = not self._closed
        self._start_refresh()

    def _start_refresh(self) -> None:
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
                self.broker_up.labels(name).set(1 if _connected(module) else 0)
            watched = self._consumers_to_watch(bus)
            results = await asyncio.gather(*(self._count(bus, labels) for labels in watched))
            for labels, counts in zip(watched, results, strict=True):
                if counts is None:
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
            server.shutdown()
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the refresh task has ended."""
        task = self._refresher
        self.close()
        if task is not None:
            await cancel_and_wait(task)


def _connected(module: Any) -> bool:
    try:
        return bool(module.provider.connected)
    except EventbusError:  # not started, degraded (no URL) or stopped
        return False


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr (the engine logs the plugin's stderr)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
