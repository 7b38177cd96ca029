"""Stopping the plugin process while a trigger's pipeline is running.

Each test runs its own plugin process (the host harness, launched as the engine
launches it) against the session nats-server, with a pipeline that takes a few
seconds, and stops the process while that pipeline runs: go-plugin's Kill
(Shutdown), SIGTERM, a drain_timeout shorter than the pipeline, and a host that
puts a deadline on Shutdown. The broker's own consumer state says whether the
message was acked (finished) or nak'd (cut short).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import PluginHost, TriggerCall

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(90)]

TRIGGER = "trigger.eventbus.subscribe"


@dataclass
class SlowPipeline:
    """TriggerWorkflow handler: each call "works" for ``seconds``, then publishes
    the payload to ``forward_to`` through the plugin's publish step (as an engine
    pipeline would, with ExecuteStep calls back into the plugin)."""

    seconds: float
    host: PluginHost | None = None
    forward: str = ""
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: list[int] = field(default_factory=list)  # delivery counts
    cancelled: int = 0

    async def __call__(self, call: TriggerCall) -> str:
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)  # the pipeline's own work
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.host is not None and self.forward:
            payload = base64.b64decode(call.data["payload"])
            await self.host.run_step(
                self.forward, pb.PublishRequest(payload=payload), pb.PublishResponse
            )
        self.finished.append(int(call.data["delivery_count"]))
        return ""


@dataclass
class Setup:
    host: PluginHost
    pipeline: SlowPipeline
    stream: str
    durable: str
    out_subject: str


@pytest_asyncio.fixture(loop_scope="session")
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest_asyncio.fixture(loop_scope="session")
async def hosts() -> AsyncIterator[list[PluginHost]]:
    """Owns the test's plugin processes: whatever a test leaves running is killed."""
    started: list[PluginHost] = []
    try:
        yield started
    finally:
        for host in started:
            await host.kill()


async def start_running_pipeline(
    hosts: list[PluginHost], nats_url: str, pipeline: SlowPipeline, drain_timeout: str
) -> Setup:
    """A plugin process with broker, stream, consumer and a started trigger; one
    message published and its pipeline running."""
    tag = uuid.uuid4().hex[:8]
    stream, durable = f"DRAIN_{tag}", f"drain-{tag}"
    subject, out_subject = f"drain.{tag}.in", f"drain.{tag}.out"
    host = PluginHost(on_trigger=pipeline)
    hosts.append(host)
    await host.start()
    pipeline.host = host
    modules = [
        await host.create_module(
            "eventbus.broker",
            "bus",
            {"provider": "nats", "dsn": nats_url, "deploy_target": "self_hosted"},
        ),
        await host.create_module(
            "eventbus.stream", "s", {"name": stream, "subjects": [f"drain.{tag}.>"]}
        ),
        await host.create_module(
            "eventbus.consumer",
            durable,
            {"name": durable, "stream_name": stream, "filter_subject": subject, "ack_wait": "30s"},
        ),
    ]
    for handle in modules:
        await host.init_module(handle)
    for handle in modules:
        await host.start_module(handle)
    trigger = await host.create_trigger(
        TRIGGER,
        "pipeline:slow",
        {"consumer": durable, "drain_timeout": drain_timeout, "backoff": ["30s"]},
    )
    await host.start_module(trigger)
    pipeline.forward = await host.create_step(
        "step.eventbus.publish", "fwd", {"subject": out_subject}
    )
    publish = await host.create_step("step.eventbus.publish", "in", {"subject": subject})
    await host.run_step(publish, pb.PublishRequest(payload=b"order-1"), pb.PublishResponse)
    await asyncio.wait_for(pipeline.started.wait(), 10)
    return Setup(host, pipeline, stream, durable, out_subject)


async def assert_acked(js: JetStreamContext, setup: Setup) -> None:
    info = await js.consumer_info(setup.stream, setup.durable)
    assert info.delivered.stream_seq == 1
    assert info.ack_floor.stream_seq == 1  # acked: settled, not waiting for redelivery
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    forwarded = await js.get_last_msg(setup.stream, setup.out_subject)
    assert forwarded.data == b"order-1"


async def assert_nakked_for_redelivery(js: JetStreamContext, setup: Setup) -> None:
    """Not acked, and back at once with delivery count 2 (a nak, not an ack wait)."""
    info = await js.consumer_info(setup.stream, setup.durable)
    assert info.ack_floor.stream_seq == 0
    sub = await js.pull_subscribe_bind(durable=setup.durable, stream=setup.stream)
    try:
        (again,) = await sub.fetch(1, timeout=5)  # the ack wait is 30 s
    finally:
        await sub.unsubscribe()
    assert (again.data, again.metadata.num_delivered) == (b"order-1", 2)
    await again.ack()


def log_text(host: PluginHost) -> str:
    return "\n".join(host.stderr_lines)


async def test_shutdown_lets_a_running_pipeline_finish_within_drain_timeout(
    hosts: list[PluginHost], nats_url: str, js: JetStreamContext
) -> None:
    # 2.5 s of work: more than the 2 s go-plugin gives after Shutdown's answer.
    setup = await start_running_pipeline(hosts, nats_url, SlowPipeline(2.5), drain_timeout="10s")
    began = time.monotonic()
    exit_after_answer = await setup.host.shutdown()
    stopped = time.monotonic() - began

    assert setup.host.shutdown_outcome == "answered"
    assert setup.pipeline.finished == [1] and setup.pipeline.cancelled == 0
    assert setup.host.process is not None and setup.host.process.returncode == 0
    assert 1.5 < stopped < 10, stopped  # waited for the pipeline, not for drain_timeout
    assert exit_after_answer < 2.0
    await assert_acked(js, setup)
    assert "pipeline:slow: drained in" in log_text(setup.host)


async def test_sigterm_lets_a_running_pipeline_finish_within_drain_timeout(
    hosts: list[PluginHost], nats_url: str, js: JetStreamContext
) -> None:
    setup = await start_running_pipeline(hosts, nats_url, SlowPipeline(2.5), drain_timeout="10s")
    process = setup.host.process
    assert process is not None
    began = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0
    stopped = time.monotonic() - began

    assert setup.pipeline.finished == [1] and setup.pipeline.cancelled == 0
    assert 1.5 < stopped < 10, stopped
    await assert_acked(js, setup)


async def test_drain_timeout_cuts_a_longer_pipeline_short_and_naks_it(
    hosts: list[PluginHost], nats_url: str, js: JetStreamContext
) -> None:
    setup = await start_running_pipeline(hosts, nats_url, SlowPipeline(60), drain_timeout="1s")
    began = time.monotonic()
    await setup.host.shutdown()
    stopped = time.monotonic() - began

    assert setup.host.shutdown_outcome == "answered"
    assert setup.pipeline.finished == [] and setup.pipeline.cancelled == 1
    # drain_timeout, plus the subscription's 1 s grace for its loop at max_in_flight 1.
    assert 1.0 <= stopped < 5, stopped
    await assert_nakked_for_redelivery(js, setup)
    log = log_text(setup.host)
    assert "sequence 1 (delivery 1) was still running" in log
    assert "1 of 1 pipeline(s) were cut short" in log


async def test_a_deadline_on_shutdown_caps_the_drain_and_is_met(
    hosts: list[PluginHost], nats_url: str, js: JetStreamContext
) -> None:
    # A stricter host than go-plugin: it wants the answer within 3 s, while the
    # trigger's drain_timeout is 30 s and its pipeline takes a minute.
    setup = await start_running_pipeline(hosts, nats_url, SlowPipeline(60), drain_timeout="30s")
    began = time.monotonic()
    await setup.host.shutdown(deadline=3.0)
    stopped = time.monotonic() - began

    assert setup.host.shutdown_outcome == "answered"  # not DEADLINE_EXCEEDED
    assert setup.pipeline.cancelled == 1
    assert stopped < 3.0 + 2.0, stopped  # answered in time, then exited
    await assert_nakked_for_redelivery(js, setup)
    assert "drain_timeout 30s cut to" in log_text(setup.host)
