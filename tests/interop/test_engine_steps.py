"""step.eventbus.consume and step.eventbus.ack inside the real engine.

The same app runs in cmd/server (HTTP routes start the pipelines) and under
``wfctl pipeline run`` (no server, modules never started by the engine). The broker's
own state (consumer info, the stored messages) shows what each pipeline settled.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import yaml
from engine_harness import EngineServer, free_port, run_wfctl, wait_for
from nats.js import JetStreamContext

from workflow_eventbus.devservers.nats_server import EmbeddedNats

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

MakeEngine = Callable[..., EngineServer]

# take-one: pull one job, process it (publish a result), ack it.
# take-batch: pull up to 10 and ack every one; the ack step is skipped when the pull
# found nothing. settle-nak / settle-term: pull one and nak / term it.
# The take-batch and settle-* ack steps name no token: the consume step's messages are
# in the pipeline's current data, and the engine hands them to the ack step as
# AckRequest.messages.
STEPS_APP = """\
name: eventbus-steps

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
  - name: jobs-stream
    type: eventbus.stream
    dependsOn: [bus]
    config:
      name: JOBS
      subjects: ["jobs.>"]
  - name: worker
    type: eventbus.consumer
    dependsOn: [jobs-stream]
    config:
      name: worker
      stream_name: JOBS
      filter_subject: jobs.todo
      ack_wait: 60s

workflows:
  http:
    server: web
    router: router

pipelines:
  take-one:
    trigger:
      type: http
      config: {path: /take-one, method: POST}
    steps:
      - name: pull
        type: step.eventbus.consume
        config: {consumer: worker, batch_size: 1, max_wait: 2s}
      # The engine builds a publish step's input from the current data, where the pull
      # left `messages` (consumed messages); PublishRequest.messages is a batch to
      # publish and cannot take them. Clear the key first (the pull's output stays
      # under .steps.pull).
      - name: forget-batch
        type: step.set
        config:
          values:
            messages: []
      - name: process
        type: step.eventbus.publish
        config:
          subject: jobs.done
          payload: 'done {{ (index .steps.pull.messages 0).sequence }}'
          headers:
            job-sequence: "{{ (index .steps.pull.messages 0).sequence }}"
      - name: ack
        type: step.eventbus.ack
        config:
          ack_token: '{{ (index .steps.pull.messages 0).ack_token }}'
      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
            job: "{{ (index .steps.pull.messages 0).sequence }}"
            settled: "{{ .steps.ack.count }}"

  take-batch:
    trigger:
      type: http
      config: {path: /take-batch, method: POST}
    steps:
      - name: pull
        type: step.eventbus.consume
        config: {consumer: worker, batch_size: 10, max_wait: 1s}
      - name: ack
        type: step.eventbus.ack
        if: '{{ if .steps.pull.messages }}true{{ end }}'
      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
            settled: '{{ if .steps.pull.messages }}{{ .steps.ack.count }}{{ else }}0{{ end }}'

  # The action is fixed per pipeline: a template in an enum field is refused when
  # the engine creates the step (it sends the config unresolved to CreateStep).
  settle-nak:
    trigger:
      type: http
      config: {path: /settle/nak, method: POST}
    steps:
      - name: pull
        type: step.eventbus.consume
        config: {consumer: worker, batch_size: 1, max_wait: 2s}
      - name: ack
        type: step.eventbus.ack
        config: {action: nak}
      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
            settled: "{{ .steps.ack.count }}"
  settle-term:
    trigger:
      type: http
      config: {path: /settle/term, method: POST}
    steps:
      - name: pull
        type: step.eventbus.consume
        config: {consumer: worker, batch_size: 1, max_wait: 2s}
      - name: ack
        type: step.eventbus.ack
        config: {action: term}
      - name: respond
        type: step.json_response
        config:
          status: 202
          body:
            settled: "{{ .steps.ack.count }}"
"""


@pytest_asyncio.fixture(loop_scope="session")
async def bus_url() -> AsyncIterator[str]:
    async with EmbeddedNats() as server:
        yield server.url


@pytest_asyncio.fixture(loop_scope="session")
async def js(bus_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(bus_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def _post(url: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


async def _start(make_engine: MakeEngine, bus_url: str, tmp_path: Path) -> tuple[EngineServer, str]:
    config = tmp_path / "steps.yaml"
    config.write_text(STEPS_APP)
    port = free_port()
    engine = make_engine(
        config, {"EVENTBUS_NATS_URL": bus_url, "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"}
    )
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()
    await engine.wait_listening(port)
    return engine, f"http://127.0.0.1:{port}"


async def _state(js: JetStreamContext) -> tuple[int, int, int]:
    """(pending, ack-pending, ack floor) of the worker consumer."""
    info = await js.consumer_info("JOBS", "worker")
    return info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq


async def test_server_pipeline_pulls_one_job_processes_and_acks_it(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    engine, base = await _start(make_engine, bus_url, tmp_path)
    seqs = [(await js.publish("jobs.todo", f"job-{i}".encode())).seq for i in range(3)]

    for seq in seqs[:2]:
        status, reply = await asyncio.to_thread(_post, f"{base}/take-one")
        assert status == 202, reply
        assert reply == {"job": str(seq), "settled": "1"}, reply
    # Two jobs acked in order, the third untouched.
    assert await _state(js) == (1, 0, seqs[1])
    done = await js.get_last_msg("JOBS", "jobs.done")
    assert done.data == f"done {seqs[1]}".encode()
    assert done.headers is not None and done.headers["job-sequence"] == str(seqs[1])

    assert await engine.stop() == 0


async def test_server_pipeline_acks_a_whole_batch_and_skips_an_empty_one(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    engine, base = await _start(make_engine, bus_url, tmp_path)
    seqs = [(await js.publish("jobs.todo", f"job-{i}".encode())).seq for i in range(13)]

    status, reply = await asyncio.to_thread(_post, f"{base}/take-batch")
    assert (status, reply) == (202, {"settled": "10"}), reply
    assert await _state(js) == (3, 0, seqs[9])
    status, reply = await asyncio.to_thread(_post, f"{base}/take-batch")
    assert (status, reply) == (202, {"settled": "3"}), reply
    assert await _state(js) == (0, 0, seqs[-1])
    # Nothing left: the pull returns no messages, the guard skips the ack step.
    status, reply = await asyncio.to_thread(_post, f"{base}/take-batch")
    assert (status, reply) == (202, {"settled": "0"}), reply
    info = await js.consumer_info("JOBS", "worker")
    assert (info.num_redelivered, info.delivered.stream_seq) == (0, seqs[-1])

    assert await engine.stop() == 0


async def test_server_pipeline_naks_and_terms(
    make_engine: MakeEngine, bus_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    engine, base = await _start(make_engine, bus_url, tmp_path)
    first = (await js.publish("jobs.todo", b"retry-me")).seq
    second = (await js.publish("jobs.todo", b"poison")).seq

    # nak: redelivered at once (no delay), so the next pull gets the same job again.
    status, reply = await asyncio.to_thread(_post, f"{base}/settle/nak")
    assert (status, reply) == (202, {"settled": "1"}), reply
    sub = await js.pull_subscribe_bind(durable="worker", stream="JOBS")
    try:
        (again,) = await sub.fetch(1, timeout=10)
        assert (again.metadata.sequence.stream, again.metadata.num_delivered) == (first, 2)
        await again.ack_sync()
    finally:
        await sub.unsubscribe()

    # term: the job is settled for good, never redelivered (nothing pending, no lease).
    status, reply = await asyncio.to_thread(_post, f"{base}/settle/term")
    assert (status, reply) == (202, {"settled": "1"}), reply
    await wait_for(
        lambda: _floor_at(js, second),
        timeout=10,
        what="the term to move the ack floor past the poison job",
        check=engine.check_running,
    )
    assert (await _state(js))[:2] == (0, 0)

    assert await engine.stop() == 0


async def _floor_at(js: JetStreamContext, seq: int) -> bool:
    return (await _state(js))[2] >= seq


def _without_http(text: str) -> dict[str, Any]:
    """The app without its HTTP server, router and triggers: wfctl knows no http.server
    and runs a pipeline by name."""
    spec: dict[str, Any] = yaml.safe_load(text)
    spec["modules"] = [m for m in spec["modules"] if not m["type"].startswith("http.")]
    del spec["workflows"]
    for pipeline in spec["pipelines"].values():
        del pipeline["trigger"]
    return spec


async def test_wfctl_pipeline_run_consumes_and_acks(
    engine_bin: Path, plugins_dir: Path, bus_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    # wfctl builds the engine but starts no module and no server: the steps start the
    # broker, stream and consumer they need.
    config = tmp_path / "steps.yaml"
    config.write_text(
        yaml.safe_dump(_without_http(STEPS_APP.replace("${EVENTBUS_NATS_URL}", bus_url)))
    )

    def run(pipeline: str) -> str:
        done = run_wfctl(
            engine_bin, "pipeline", "run", "-c", str(config), "-p", pipeline,
            "--plugin-dir", str(plugins_dir), "--verbose",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Pipeline completed successfully" in done.stdout, done.stdout
        return done.stdout

    # The first run creates the stream and the consumer; nothing to take yet, so the
    # ack step is skipped.
    await asyncio.to_thread(run, "take-batch")
    assert await _state(js) == (0, 0, 0)
    seqs = [(await js.publish("jobs.todo", f"job-{i}".encode())).seq for i in range(5)]

    await asyncio.to_thread(run, "take-one")
    assert await _state(js) == (4, 0, seqs[0])
    assert (await js.get_last_msg("JOBS", "jobs.done")).data == f"done {seqs[0]}".encode()

    await asyncio.to_thread(run, "take-batch")
    assert await _state(js) == (0, 0, seqs[-1])
    info = await js.consumer_info("JOBS", "worker")
    assert info.num_redelivered == 0
