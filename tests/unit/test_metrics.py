"""Prometheus metrics on the memory double: each series moves with its event, read
from the registry; the listener, its address rules and its shutdown."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from workflow_eventbus import EventBus, SubscribeTrigger, create_step
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError, EventbusError
from workflow_eventbus.engine.telemetry import Labels
from workflow_eventbus.engine.telemetry.metrics import (
    SERIES,
    Metrics,
    metrics_from_environ,
    parse_addr,
)
from workflow_eventbus.providers.base import AckAction
from workflow_eventbus.providers.memory import MemoryBroker

_ids = itertools.count()
WORKER = {"broker": "bus", "stream": "ORDERS", "consumer": "worker"}


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def metered() -> AsyncIterator[tuple[EventBus, Metrics]]:
    metrics = Metrics(refresh_interval=0.02)
    bus = EventBus(environ={}, test_doubles=True, telemetry=metrics)
    url = f"memory://metrics{next(_ids)}"
    for module in (
        bus.create_module("eventbus.broker", "bus", {"provider": "memory", "dsn": url}),
        bus.create_module("eventbus.stream", "s", {"name": "ORDERS", "subjects": ["orders.>"]}),
        bus.create_module("eventbus.consumer", "c", {"name": "worker", "stream_name": "ORDERS"}),
    ):
        await module.start()
    try:
        yield bus, metrics
    finally:
        await bus.close()
        await metrics.aclose()
        MemoryBroker.reset()


async def test_publish_counts_and_errors_by_broker_and_stream(
    metered: tuple[EventBus, Metrics],
) -> None:
    bus, m = metered
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.created"})
    await step.execute(pb.PublishRequest(payload=b"{}"))
    await step.execute(
        pb.PublishRequest(messages=[pb.PublishRequest(payload=b"1"), pb.PublishRequest()])
    )
    assert value(m, "eventbus_published_total", broker="bus", stream="ORDERS") == 3
    assert value(m, "eventbus_publish_errors_total", broker="bus", stream="ORDERS") == 0
    nowhere = create_step(bus, "step.eventbus.publish", "lost", {"subject": "nowhere.x"})
    with pytest.raises(EventbusError):
        await nowhere.execute(pb.PublishRequest(payload=b"{}"))
    assert value(m, "eventbus_publish_errors_total", broker="bus", stream="") == 1
    assert value(m, "eventbus_published_total", broker="bus", stream="ORDERS") == 3


async def test_consume_series_follow_success_retry_and_dead_letter(
    metered: tuple[EventBus, Metrics],
) -> None:
    bus, m = metered
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.created"})
    for body in (b'"ok"', b'"bad"'):
        await step.execute(pb.PublishRequest(payload=body))
    await bus.provider().ensure_stream(pb.StreamConfig(name="DLQ", subjects=["dlq.x"]))
    in_flight_seen: list[float | None] = []

    async def handler(data: dict[str, Any]) -> None:
        in_flight_seen.append(value(m, "eventbus_in_flight", **WORKER))
        if data["body"] == "bad":
            raise RuntimeError("refused")

    trig = SubscribeTrigger.from_trigger_config(
        bus,
        "p",
        {
            "consumer": "worker",
            "max_deliver": 2,
            "backoff": ["10ms"],
            "dead_letter_subject": "dlq.x",
        },
        handler,
    )
    await trig.start()
    try:
        await until(lambda: value(m, "eventbus_dead_lettered_total", **WORKER) == 1)
    finally:
        await trig.stop()
    # ok once; bad twice (the second is a redelivery), then copied and terminated.
    assert value(m, "eventbus_delivered_total", **WORKER) == 3
    assert value(m, "eventbus_redelivered_total", **WORKER) == 1
    assert value(m, "eventbus_acked_total", **WORKER) == 1
    assert value(m, "eventbus_nacked_total", **WORKER) == 1
    assert value(m, "eventbus_terminated_total", **WORKER) == 1
    assert value(m, "eventbus_handler_errors_total", **WORKER) == 2
    assert value(m, "eventbus_handler_seconds_count", **WORKER) == 3
    assert value(m, "eventbus_handler_seconds_bucket", le="+Inf", **WORKER) == 3
    assert (value(m, "eventbus_handler_seconds_sum", **WORKER) or 0) > 0
    assert in_flight_seen == [1.0, 1.0, 1.0]  # the gauge counts the running pipeline
    assert value(m, "eventbus_in_flight", **WORKER) == 0


async def test_in_progress_signals_are_counted(metered: tuple[EventBus, Metrics]) -> None:
    _, m = metered
    labels = Labels("bus", "ORDERS", "worker")
    m.settled(labels, AckAction.IN_PROGRESS, 4)
    m.settled(labels, AckAction.ACK)
    assert value(m, "eventbus_in_progress_total", **WORKER) == 4
    assert value(m, "eventbus_acked_total", **WORKER) == 1


async def test_pending_gauges_follow_the_consumer_and_broker_up_the_broker(
    metered: tuple[EventBus, Metrics],
) -> None:
    bus, m = metered
    await until(lambda: value(m, "eventbus_broker_up", broker="bus") == 1)
    await until(lambda: value(m, "eventbus_consumer_pending", **WORKER) == 0)
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.created"})
    for _ in range(3):
        await step.execute(pb.PublishRequest(payload=b"{}"))
    await until(lambda: value(m, "eventbus_consumer_pending", **WORKER) == 3)
    leased = await bus.provider().fetch("ORDERS", "worker", 2, 1.0)
    await until(lambda: value(m, "eventbus_consumer_ack_pending", **WORKER) == 2)
    assert value(m, "eventbus_consumer_pending", **WORKER) == 1
    await bus.provider().settle([d.ack_token for d in leased], AckAction.ACK)
    await until(lambda: value(m, "eventbus_consumer_ack_pending", **WORKER) == 0)
    # The broker stops: it is down, and counts that cannot be read are not exported.
    await bus.close()
    await until(lambda: value(m, "eventbus_broker_up", broker="bus") == 0)
    await until(lambda: value(m, "eventbus_consumer_pending", **WORKER) is None)
    assert value(m, "eventbus_consumer_ack_pending", **WORKER) is None


async def test_handler_histogram_buckets_hold_their_upper_bound() -> None:
    m = Metrics()
    labels = Labels("bus", "ORDERS", "worker")
    for seconds in (0.0005, 0.0007, 2.0, 400.0):
        m.handler_finished(m.handler_started(labels, _delivery()), labels, seconds, None)
    buckets = {
        le: value(m, "eventbus_handler_seconds_bucket", le=le, **WORKER)
        for le in ("0.0005", "0.001", "2.5", "300.0", "+Inf")
    }
    assert buckets == {"0.0005": 1, "0.001": 2, "2.5": 3, "300.0": 3, "+Inf": 4}
    assert value(m, "eventbus_handler_seconds_count", **WORKER) == 4
    assert value(m, "eventbus_handler_seconds_sum", **WORKER) == pytest.approx(402.0012)
    assert value(m, "eventbus_in_flight", **WORKER) == 0
    m.close()


def _delivery() -> Any:
    from datetime import UTC, datetime

    from workflow_eventbus.providers.base import Delivery

    return Delivery("ORDERS", "worker", "orders.x", b"", {}, 1, datetime.now(UTC), 1, "t")


async def test_broker_state_hook_sets_broker_up() -> None:
    m = Metrics()
    m.broker_state("east", False)
    assert value(m, "eventbus_broker_up", broker="east") == 0
    m.broker_state("east", True)
    assert value(m, "eventbus_broker_up", broker="east") == 1
    m.close()


class _Provider:
    connected = True


class _Broker:
    provider = _Provider()


class _Bus:
    brokers = {"quiet": _Broker(), "told": _Broker()}
    consumers: dict[str, Any] = {}


async def test_a_broker_that_never_reports_its_state_is_asked_at_refresh() -> None:
    m = Metrics(refresh_interval=3600)
    m.attach(_Bus())
    m.broker_state("told", False)  # reported: the refresh leaves it alone
    await m.refresh()
    assert value(m, "eventbus_broker_up", broker="quiet") == 1
    assert value(m, "eventbus_broker_up", broker="told") == 0
    await m.aclose()


async def test_every_series_is_exported_and_labels_never_carry_subjects(
    metered: tuple[EventBus, Metrics],
) -> None:
    bus, m = metered
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.created.eu"})
    await step.execute(pb.PublishRequest(payload=b"{}", headers={"tenant": "t-9"}))
    handled = asyncio.Event()

    async def handler(data: dict[str, Any]) -> None:
        handled.set()

    trig = SubscribeTrigger.from_trigger_config(bus, "p", {"consumer": "worker"}, handler)
    await trig.start()
    await asyncio.wait_for(handled.wait(), 5)
    await until(lambda: value(m, "eventbus_acked_total", **WORKER) == 1)
    await until(lambda: value(m, "eventbus_consumer_pending", **WORKER) is not None)
    m.broker_state("bus", True)
    await trig.stop()
    samples = [s for family in m.registry.collect() for s in family.samples]
    names = {s.name for s in samples}
    for name, (kind, _, _) in SERIES.items():
        wanted = (
            {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name}
        )
        assert wanted <= names, name
    assert names <= set(m.names())
    for sample in samples:
        assert set(sample.labels) <= {"broker", "stream", "consumer", "le"}, sample
        for text in sample.labels.values():
            assert "orders." not in text and "t-9" not in text, sample


async def test_two_buses_keep_their_own_registries() -> None:
    a, b = Metrics(), Metrics()
    labels = Labels("bus", "S", "c")
    a.settled(labels, AckAction.ACK, 2)
    assert a.registry.get_sample_value("eventbus_acked_total", vars_of(labels)) == 2
    assert b.registry.get_sample_value("eventbus_acked_total", vars_of(labels)) is None
    a.close()
    b.close()


def vars_of(labels: Labels) -> dict[str, str]:
    return {"broker": labels.broker, "stream": labels.stream, "consumer": labels.consumer}


# --- the environment and the listener ------------------------------------------------


def test_unset_or_empty_address_means_no_metrics() -> None:
    assert metrics_from_environ({}) is None
    assert metrics_from_environ({"EVENTBUS_METRICS_ADDR": " "}) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:0", ("localhost", 0)),
        (":9464", ("0.0.0.0", 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_address_forms(raw: str, expected: tuple[str, int]) -> None:
    assert parse_addr(raw) == expected


@pytest.mark.parametrize("raw", ["9464", "host:", "host:port", "h:70000", "::1:80", "[::1]80"])
def test_bad_address_names_the_variable_the_value_and_the_fix(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        metrics_from_environ({"EVENTBUS_METRICS_ADDR": raw})
    text = str(caught.value)
    assert text.startswith("EVENTBUS_METRICS_ADDR: ")
    assert repr(raw) in text and "host:port" in text and "unset it" in text


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"EVENTBUS_METRICS_ADDR: cannot listen.*:{port}"):
            metrics_from_environ({"EVENTBUS_METRICS_ADDR": f"127.0.0.1:{port}"})


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_serves_prometheus_text_on_metrics_and_stops_on_close() -> None:
    metrics = metrics_from_environ({"EVENTBUS_METRICS_ADDR": "127.0.0.1:0"})
    assert metrics is not None and metrics.address is not None
    host, port = metrics.address
    metrics.after_publish(None, "bus", "ORDERS", 5, None)
    status, kind, text = await asyncio.to_thread(get, f"http://{host}:{port}/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert 'eventbus_published_total{broker="bus",stream="ORDERS"} 5.0' in text
    assert "process_resident_memory_bytes" in text and "python_info" in text
    assert "_created" not in text  # the plugin turns those off
    status, _, text = await asyncio.to_thread(get, f"http://{host}:{port}/")
    assert status == 404 and "/metrics" in text
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(OSError), socket.create_connection((host, port), timeout=1):
        pass


async def test_aclose_awaits_the_refresh_task(metered: tuple[EventBus, Metrics]) -> None:
    bus, m = metered
    task = m._refresher
    assert task is not None and not task.done()
    m.attach(bus)  # attached again: still the one task
    assert m._refresher is task
    await m.aclose()
    assert task.done()
    m.attach(bus)  # closed: no task starts again
    assert m._refresher is None


def test_a_bus_built_outside_a_loop_starts_the_refresh_with_its_first_event() -> None:
    m = Metrics(refresh_interval=3600)
    bus = EventBus(environ={}, test_doubles=True, telemetry=m)
    assert m._refresher is None  # no running loop yet
    labels = Labels("bus", "ORDERS", "worker")

    async def first_event() -> bool:
        m.delivered(labels, _delivery())
        started = m._refresher is not None
        await m.aclose()
        return started

    assert asyncio.run(first_event())
    assert bus.telemetry is m
