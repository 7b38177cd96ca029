"""The plugin inside the real engine (cmd/server), against a real nats-server.

Each test runs one of the app configs in ``interop/apps`` unchanged, with its own
nats-server, feeds input events (over HTTP, or straight into JetStream), and reads
what the engine's pipelines published with nats-py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
import pytest_asyncio
import yaml
from engine_harness import (
    APPS,
    REPO,
    EngineServer,
    free_port,
    post_accepted,
    processes_in,
    run_wfctl,
    wait_for,
)
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy, RetentionPolicy, StorageType

from workflow_eventbus.devservers.nats_server import EmbeddedNats

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

MakeEngine = Callable[..., EngineServer]


@pytest_asyncio.fixture(loop_scope="session")
async def bus_url() -> AsyncIterator[str]:
    """A private JetStream server: the app configs use fixed stream names."""
    async with EmbeddedNats() as server:
        yield server.url


@pytest_asyncio.fixture(loop_scope="session")
async def js(bus_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(bus_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def _drained(js: JetStreamContext, stream: str, consumer: str, last_seq: int) -> bool:
    """The consumer has seen every message up to ``last_seq`` and settled all of them."""
    info = await js.consumer_info(stream, consumer)
    return (
        info.delivered.stream_seq >= last_seq
        and info.num_pending == 0
        and info.num_ack_pending == 0
        and info.ack_floor.stream_seq >= last_seq
    )


async def _messages_on(
    js: JetStreamContext, stream: str, subject: str
) -> list[nats.js.api.RawStreamMsg]:
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        if msg.subject == subject:
            found.append(msg)
    return found


def _http_payloads(count: int) -> list[bytes]:
    """Distinct request bodies: JSON of several shapes, plain and non-ASCII text,
    template-looking text, and one large body."""
    out = []
    for i in range(count):
        match i % 5:
            case 0:
                body = json.dumps({"order": i, "items": [{"sku": f"sku-{i}", "qty": i % 3 + 1}]})
            case 1:
                body = f"plain text order {i}\nsecond line\ttab"
            case 2:
                body = json.dumps({"order": i, "note": "café ✓ 注文"}, ensure_ascii=False)
            case 3:
                body = f"order {i} says {{{{ .subject }}}} literally"
            case _:
                body = json.dumps({"order": i, "blob": "x" * 48_000})
        out.append(body.encode())
    return out


async def _start_orders_app(make_engine: MakeEngine, bus_url: str) -> tuple[EngineServer, int]:
    """cmd/server running interop/apps/orders.yaml, plugin loaded, HTTP port open."""
    port = free_port()
    engine = make_engine(
        APPS / "orders.yaml",
        {"EVENTBUS_NATS_URL": bus_url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"},
    )
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_listening(port)
    return engine, port


async def test_http_events_yield_exactly_one_derived_event_each(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext
) -> None:
    engine, port = await _start_orders_app(make_engine, bus_url)

    payloads = _http_payloads(40)
    url = f"http://127.0.0.1:{port}/orders"
    # Eight requests in flight: the engine runs pipelines (and so ExecuteStep
    # calls into the plugin) concurrently.
    limit = asyncio.Semaphore(8)

    async def post(body: bytes) -> int:
        async with limit:
            reply = await asyncio.to_thread(post_accepted, url, body)
        return int(reply["sequence"])

    sequences = await asyncio.gather(*(post(body) for body in payloads))
    assert len(set(sequences)) == len(payloads), sequences

    await wait_for(
        lambda: _drained(js, "ORDERS", "order-deriver", max(sequences)),
        timeout=60,
        what="the derive pipeline to settle every orders.created event",
        check=engine.check_running,
    )
    created = {msg.seq: msg for msg in await _messages_on(js, "ORDERS", "orders.created")}
    derived = await _messages_on(js, "ORDERS", "orders.derived")

    # The ingest pipeline published each body once, byte for byte.
    assert sorted(created) == sorted(sequences)
    for seq, body in zip(sequences, payloads, strict=True):
        assert created[seq].data == body
        assert created[seq].headers == {"source": "http-ingest"}

    # The derive pipeline published exactly one event per input, same bytes.
    by_source = Counter(msg.headers["source-sequence"] for msg in derived)
    assert by_source == Counter(str(seq) for seq in sequences)
    for msg in derived:
        source = created[int(msg.headers["source-sequence"])]
        assert msg.data == source.data
        assert msg.headers["source-subject"] == "orders.created"

    log = engine.log()
    assert log.count("Workflow 'pipeline:derive' executed successfully") == len(payloads)
    assert log.count("Workflow 'pipeline:ingest' executed successfully") == len(payloads)

    assert await engine.stop() == 0
    assert processes_in(engine.plugin_dir) == []


async def test_go_plugin_config_shapes_run_unchanged(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext
) -> None:
    # infra.eventbus* module names, the consumer/bus trigger aliases, and a
    # publish step fed only by its typed input (step.set before it).
    engine = make_engine(APPS / "go-shapes.yaml", {"EVENTBUS_NATS_URL": bus_url})
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()

    # Binary payloads too: the bytes travel base64-encoded through the pipeline.
    # The last is larger than HTTP/2's default windows and frame size, so its
    # TriggerWorkflow call is paced by the Go server's flow control.
    payloads = [os.urandom(64) if i % 2 else f'{{"delivery": {i}}}'.encode() for i in range(20)]
    payloads.append(os.urandom(400_000))
    acks = [
        await js.publish("fulfillment.delivered", body, headers={"x-input": str(i)})
        for i, body in enumerate(payloads)
    ]

    await wait_for(
        lambda: _drained(js, "FULFILLMENT", "settlement-runner", acks[-1].seq),
        timeout=60,
        what="the on-delivered pipeline to settle every fulfillment.delivered event",
        check=engine.check_running,
    )
    settled = await _messages_on(js, "FULFILLMENT", "fulfillment.settled")

    assert Counter(msg.headers["x-input"] for msg in settled) == Counter(
        str(i) for i in range(len(payloads))
    )
    for msg in settled:
        assert msg.data == payloads[int(msg.headers["x-input"])]
    assert engine.log().count("Workflow 'pipeline:on-delivered' executed successfully") == len(
        payloads
    )

    assert await engine.stop() == 0


async def test_stopping_the_engine_leaves_no_plugin_process(
    make_engine: MakeEngine, bus_url: str
) -> None:
    engine, _port = await _start_orders_app(make_engine, bus_url)
    assert engine.plugin_pids

    assert await engine.stop() == 0
    assert processes_in(engine.plugin_dir) == []
    assert "Shutdown complete" in engine.log()


async def test_killing_the_engine_leaves_no_plugin_process(
    make_engine: MakeEngine, bus_url: str
) -> None:
    # SIGKILL: no StopModule, no plugin shutdown call. The plugin must notice
    # that its engine is gone and exit by itself.
    engine, _port = await _start_orders_app(make_engine, bus_url)
    pids = list(engine.plugin_pids)

    engine.kill()
    await wait_for(
        lambda: processes_in(engine.plugin_dir) == [],
        timeout=15,
        what=f"plugin processes {pids} to exit after the engine was killed",
    )


async def test_engine_rejects_unknown_step_config_keys_at_build_time(
    make_engine: MakeEngine, bus_url: str, tmp_path: Path
) -> None:
    # STRICT step contracts reach the engine: a key that is not a field of
    # PublishStepConfig fails CreateStep, and the server refuses to start.
    config = tmp_path / "bad-step.yaml"
    spec = (
        (APPS / "orders.yaml")
        .read_text()
        .replace(
            "          subject: orders.derived\n",
            "          subject: orders.derived\n          subjekt: typo\n",
        )
    )
    assert "subjekt" in spec
    config.write_text(spec)
    port = free_port()
    engine = make_engine(
        config, {"EVENTBUS_NATS_URL": bus_url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"}
    )
    engine.start()
    assert engine.proc is not None
    code = await asyncio.to_thread(engine.proc.wait, 60)
    assert code != 0
    log = engine.log()
    assert "subjekt" in log, engine.log_tail()
    await wait_for(
        lambda: processes_in(engine.plugin_dir) == [],
        timeout=15,
        what="the plugin to exit after the engine failed to start",
    )


def _example_apps() -> list[Path]:
    """Example configs that are engine apps (they have pipelines)."""
    return [
        path
        for path in sorted((REPO / "examples").glob("*.yaml"))
        if (yaml.safe_load(path.read_text()) or {}).get("pipelines")
    ]


@pytest.mark.parametrize("example", _example_apps(), ids=lambda p: p.name)
async def test_example_app_starts_and_stops_in_the_engine(
    make_engine: MakeEngine, bus_url: str, tmp_path: Path, example: Path
) -> None:
    # The example as written, except that its NATS URLs point at this test's server.
    config = tmp_path / example.name
    config.write_text(re.sub(r"nats://[\w.\-]+:\d+", bus_url, example.read_text()))
    engine = make_engine(config)
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()

    assert await engine.stop() == 0
    assert processes_in(engine.plugin_dir) == []


# --- config forms through the engine ----------------------------------------------

# Module and step configs written with the short enum names and Go duration text
# the README documents. The take pipeline pulls one message and naks it with a
# delay; the broker's own state shows what the engine made of each setting.
FORMS_APP = """\
name: eventbus-config-forms

modules:
  - name: web
    type: http.server
    config:
      address: "${EVENTBUS_HTTP_ADDR}"
  - name: router
    type: http.router
    dependsOn: [web]
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: self_hosted
      dsn: "${EVENTBUS_NATS_URL}"
      connect_timeout: 1m30s
  - name: jobs-stream
    type: eventbus.stream
    dependsOn: [bus]
    config:
      name: JOBS
      subjects: ["jobs.>"]
      retention_policy: limits
      storage: file
      max_age: 24h
      duplicate_window: 2m
  - name: worker
    type: eventbus.consumer
    dependsOn: [jobs-stream]
    config:
      name: worker
      stream_name: JOBS
      deliver_policy: all
      ack_policy: explicit
      ack_wait: 1m30s
      max_deliver: 5

workflows:
  http:
    server: web
    router: router

pipelines:
  take:
    trigger:
      type: http
      config:
        path: /take
        method: POST
    steps:
      - name: consume
        type: step.eventbus.consume
        config:
          consumer: worker
          batch_size: 1
          max_wait: 1500ms
      - name: nak
        type: step.eventbus.ack
        config:
          ack_token: '{{ (index .steps.consume.messages 0).ack_token }}'
          action: nak
          delay: 1500ms
      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
            settled: "{{ .steps.nak.count }}"
"""


async def test_documented_enum_and_duration_forms_work_through_the_engine(
    make_engine: MakeEngine,
    engine_bin: Path,
    plugins_dir: Path,
    bus_url: str,
    js: JetStreamContext,
    tmp_path: Path,
) -> None:
    config = tmp_path / "forms.yaml"
    config.write_text(FORMS_APP)
    validated = run_wfctl(engine_bin, "validate", "--plugin-dir", str(plugins_dir), str(config))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    port = free_port()
    engine = make_engine(
        config, {"EVENTBUS_NATS_URL": bus_url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"}
    )
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()
    await engine.wait_listening(port)

    # What the broker was told: every short form arrived as the value it names.
    stream = (await js.stream_info("JOBS")).config
    assert stream.retention == RetentionPolicy.LIMITS
    assert stream.storage == StorageType.FILE
    assert (stream.max_age, stream.duplicate_window) == (86_400, 120)
    consumer = (await js.consumer_info("JOBS", "worker")).config
    assert consumer.ack_policy == AckPolicy.EXPLICIT
    assert consumer.deliver_policy == DeliverPolicy.ALL
    assert (consumer.ack_wait, consumer.max_deliver) == (90, 5)

    # The ack step's `action: nak` with `delay: 1500ms`: the message is still
    # leased after the pipeline (an ack or term would have removed it) and comes
    # back after the delay, not at once (a bare nak) and not after the 90 s
    # ack wait (no settle at all, or in_progress).
    await js.publish("jobs.one", b"job-1")
    reply = await asyncio.to_thread(post_accepted, f"http://127.0.0.1:{port}/take", b"")
    answered = time.monotonic()
    assert reply == {"settled": "1"}, reply  # one token settled
    info = await js.consumer_info("JOBS", "worker")
    assert (info.num_ack_pending, info.num_pending) == (1, 0)
    sub = await js.pull_subscribe_bind(durable="worker", stream="JOBS")
    try:
        (again,) = await sub.fetch(1, timeout=20)
    finally:
        await sub.unsubscribe()
    waited = time.monotonic() - answered
    assert again.data == b"job-1"
    assert again.metadata.num_delivered == 2
    assert 1.0 <= waited < 20, waited
    await again.ack()

    assert await engine.stop() == 0


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (  # a short form that names no value: the choices are listed
            "ack_policy: explicit\n",
            "ack_policy: explicitly\n",
            ["ack_policy", "explicitly", "explicit, none, all"],
        ),
        (  # a key of no field: named, with the valid keys
            "deliver_policy: all\n",
            "deliver_polcy: all\n",
            ["deliver_polcy", "unknown key for ConsumerConfig", "deliver_policy"],
        ),
        (  # step config: an action that does not exist
            "action: nak\n",
            "action: nack\n",
            ["action", "nack", "ack, nak, term, in_progress"],
        ),
    ],
    ids=["bad-enum", "unknown-key", "bad-step-enum"],
)
async def test_engine_refuses_bad_config_forms_naming_the_setting(
    make_engine: MakeEngine,
    bus_url: str,
    tmp_path: Path,
    old: str,
    new: str,
    expected: list[str],
) -> None:
    assert old in FORMS_APP
    config = tmp_path / "bad-forms.yaml"
    config.write_text(FORMS_APP.replace(old, new))
    engine = make_engine(
        config,
        {"EVENTBUS_NATS_URL": bus_url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{free_port()}"},
    )
    engine.start()
    assert engine.proc is not None
    code = await asyncio.to_thread(engine.proc.wait, 60)
    assert code != 0
    log = engine.log()
    for text in expected:
        assert text in log, (text, engine.log_tail())
    await wait_for(
        lambda: processes_in(engine.plugin_dir) == [],
        timeout=15,
        what="the plugin to exit after the engine failed to start",
    )


# --- stopping the engine while a pipeline runs ------------------------------------

# The slow pipeline's first step waits 4 s for a message that never comes (a consume
# on an idle consumer), then it forwards the event.
SLOW_APP = """\
name: eventbus-slow-pipeline

modules:
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: self_hosted
      dsn: "${EVENTBUS_NATS_URL}"
  - name: slow-stream
    type: eventbus.stream
    dependsOn: [bus]
    config:
      name: SLOW
      subjects: ["slow.>"]
  - name: slow-worker
    type: eventbus.consumer
    dependsOn: [slow-stream]
    config: {name: slow-worker, stream_name: SLOW, filter_subject: slow.in}
  - name: idle
    type: eventbus.consumer
    dependsOn: [slow-stream]
    config: {name: idle, stream_name: SLOW, filter_subject: slow.never}

pipelines:
  slow:
    trigger:
      type: trigger.eventbus.subscribe
      config:
        name: slow-worker
        drain_timeout: 20s
    steps:
      - name: work
        type: step.eventbus.consume
        config: {consumer: idle, batch_size: 1, max_wait: 4s}
      - name: forward
        type: step.eventbus.publish
        config: {subject: slow.out}
"""


async def test_sigterm_to_the_engine_lets_a_running_pipeline_finish_and_ack(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    # cmd/server stops triggers first, with no deadline (StopModule), so the
    # trigger's drain_timeout governs: the running pipeline finishes and is acked.
    config = tmp_path / "slow.yaml"
    config.write_text(SLOW_APP)
    engine = make_engine(config, {"EVENTBUS_NATS_URL": bus_url})
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()
    ack = await js.publish("slow.in", b"order-7")
    await wait_for(
        lambda: "Triggered workflow 'pipeline:slow'" in engine.log(),
        timeout=30,
        what="the slow pipeline to start",
        check=engine.check_running,
    )
    began = time.monotonic()
    assert await engine.stop() == 0
    stopped = time.monotonic() - began

    assert stopped > 2.0, stopped  # it waited for the pipeline's 4 s step
    assert "Workflow 'pipeline:slow' executed successfully" in engine.log()
    forwarded = await js.get_last_msg("SLOW", "slow.out")
    assert forwarded.data == b"order-7"
    info = await js.consumer_info("SLOW", "slow-worker")
    assert info.ack_floor.stream_seq == ack.seq
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
