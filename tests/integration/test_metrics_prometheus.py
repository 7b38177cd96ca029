"""A real Prometheus scrapes the plugin process (EVENTBUS_METRICS_ADDR) that the test
drives through the engine protocol, on a real nats-server and a real PostgreSQL:
its query API returns exactly the counts the test produced."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from fixtures_prometheus import PrometheusServer, StartPrometheus

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import PluginHost, TriggerCall

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVING = re.compile(r"metrics: serving Prometheus text on http://([^/\s]+)/metrics")
WORKED, IDLE, PG_IDLE = 7, 3, 4  # messages: through the trigger, left on nats, left on pg


async def metrics_target(host: PluginHost, timeout: float = 10.0) -> str:
    """The host:port the plugin says it bound (EVENTBUS_METRICS_ADDR had port 0)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in host.stderr_lines:
            if found := SERVING.search(line):
                return found.group(1)
        assert time.monotonic() < deadline, f"no metrics line in: {list(host.stderr_lines)}"
        await asyncio.sleep(0.02)


async def values(prom: PrometheusServer, exprs: dict[str, str]) -> dict[str, float | None]:
    seen: dict[str, float | None] = {}
    for key, expr in exprs.items():
        result = await prom.query(expr)
        seen[key] = float(result[0]["value"][1]) if result else None
    return seen


async def settle_on(
    prom: PrometheusServer, expected: dict[str, float], timeout: float = 40.0
) -> None:
    """Poll Prometheus until every query gives its expected value (or fail with both)."""
    deadline = time.monotonic() + timeout
    exprs = {key: key for key in expected}
    while (seen := await values(prom, exprs)) != expected:
        assert time.monotonic() < deadline, f"prometheus saw {seen}, expected {expected}"
        await asyncio.sleep(0.2)


async def start(host: PluginHost, kind: str, name: str, config: Any) -> str:
    handle = await host.create_module(kind, name, typed=config)
    await host.init_module(handle)
    await host.start_module(handle)
    return handle


async def test_prometheus_returns_the_published_acked_and_pending_counts(
    prometheus: StartPrometheus, nats_url: str, pg_dsn: str, pg_schema: str
) -> None:
    calls: list[TriggerCall] = []

    async def engine(call: TriggerCall) -> str:
        calls.append(call)
        return ""  # the workflow succeeded: the trigger acks

    env = {"EVENTBUS_METRICS_ADDR": "127.0.0.1:0"}
    async with PluginHost(env=env, on_trigger=engine) as host:
        target = await metrics_target(host)
        prom = await prometheus([target])

        nats_cluster = pb.ClusterConfig(provider="nats", deploy_target="self_hosted", dsn=nats_url)
        await start(host, "eventbus.broker", "bus", nats_cluster)
        await start(
            host,
            "eventbus.stream",
            "mx",
            pb.StreamConfig(name="METRICS_IT", subjects=["mx.>"], broker_ref="bus"),
        )
        pg_cluster = pb.ClusterConfig(
            provider="pgchannel", broker_target="in_process", dsn=pg_dsn, schema=pg_schema
        )
        await start(host, "eventbus.broker", "pg", pg_cluster)
        await start(
            host,
            "eventbus.stream",
            "pgmx",
            pb.StreamConfig(name="pg_mx", subjects=["pgmx.>"], broker_ref="pg"),
        )
        for name, stream, subject, broker in (
            ("mx-worker", "METRICS_IT", "mx.work", "bus"),
            ("mx-idle", "METRICS_IT", "mx.idle", "bus"),
            ("pg-idle", "pg_mx", "pgmx.idle", "pg"),
        ):
            config = pb.ConsumerConfig(
                name=name, stream_name=stream, filter_subject=subject, broker_ref=broker
            )
            await start(host, "eventbus.consumer", name, config)
        trigger = await host.create_trigger(
            "trigger.eventbus.subscribe", "pipeline:mx", {"consumer": "mx-worker", "bus": "bus"}
        )
        await host.start_module(trigger)

        for subject, broker, count in (
            ("mx.work", "bus", WORKED),
            ("mx.idle", "bus", IDLE),
            ("pgmx.idle", "pg", PG_IDLE),
        ):
            step = await host.create_step(
                "step.eventbus.publish",
                f"pub-{subject}",
                {"subject": subject, "broker_ref": broker},
            )
            for i in range(count):
                await host.run_step(
                    step, pb.PublishRequest(payload=f'{{"n": {i}}}'.encode()), pb.PublishResponse
                )

        worker = 'broker="bus",stream="METRICS_IT",consumer="mx-worker"'
        await settle_on(
            prom,
            {
                'sum(eventbus_published_total{broker="bus",stream="METRICS_IT"})': WORKED + IDLE,
                'sum(eventbus_published_total{broker="pg",stream="pg_mx"})': PG_IDLE,
                "sum(eventbus_publish_errors_total)": 0,
                f"sum(eventbus_delivered_total{{{worker}}})": WORKED,
                f"sum(eventbus_acked_total{{{worker}}})": WORKED,
                f"sum(eventbus_nacked_total{{{worker}}})": 0,
                f"sum(eventbus_handler_seconds_count{{{worker}}})": WORKED,
                f"sum(eventbus_in_flight{{{worker}}})": 0,
                f"sum(eventbus_consumer_pending{{{worker}}})": 0,
                f"sum(eventbus_consumer_ack_pending{{{worker}}})": 0,
                'sum(eventbus_consumer_pending{broker="bus",consumer="mx-idle"})': IDLE,
                'sum(eventbus_consumer_pending{broker="pg",consumer="pg-idle"})': PG_IDLE,
                'sum(eventbus_broker_up{broker="bus"})': 1,
                'sum(eventbus_broker_up{broker="pg"})': 1,
            },
        )
        assert len(calls) == WORKED
        # Bounded labels: names of brokers, streams and consumers only, no subject anywhere.
        for series in await prom.query('{__name__=~"eventbus_.+"}'):
            labels = set(series["metric"]) - {"__name__", "instance", "job", "le"}
            assert labels <= {"broker", "stream", "consumer"}, series["metric"]
            assert not any("mx." in v for v in series["metric"].values()), series["metric"]
        [up] = [t for t in await prom.targets_up() if t["labels"]["instance"] == target]
        assert up["health"] == "up"
        await host.stop_module(trigger)
