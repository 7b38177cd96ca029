"""Inside cmd/server: two brokers in one app, dead letters after backoff, restarts.

- ``broker_ref`` routes live: an app with two brokers (two nats-servers) derives events
  from each onto the other, and every event is stored on the server its broker names,
  never on the other one.
- A pipeline that keeps failing goes through the consumer's backoff to the dead-letter
  stream, all inside the engine: the copy carries the error and the delivery count, the
  message leaves its stream's consumer, the good ones are derived once.
- An engine restarted over the streams and consumers it created (after SIGTERM, and
  after kill -9 mid-run) starts without an error and derives every event published
  before, during and after the restarts; the consumer is the same one.
- A republish in a trigger pipeline does not carry the incoming Nats-Msg-Id (JetStream
  would drop it as a duplicate); a ``msg_id`` in the publish step sets its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from engine_harness import APPS, EngineServer, wait_for
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from workflow_eventbus.devservers.nats_server import EmbeddedNats

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

MakeEngine = Callable[..., EngineServer]


@pytest_asyncio.fixture(loop_scope="session")
async def two_servers() -> AsyncIterator[tuple[str, str]]:
    async with EmbeddedNats() as east, EmbeddedNats() as west:
        yield east.url, west.url


async def _stored(
    js: JetStreamContext, stream: str, subject: str
) -> list[nats.js.api.RawStreamMsg]:
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue  # removed (work queue, or deleted)
        if msg.subject == subject:
            found.append(msg)
    return found


async def _drained(js: JetStreamContext, stream: str, consumer: str, last: int) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq >= last


# --- two brokers ------------------------------------------------------------------

TWO_BROKERS_APP = """\
name: eventbus-two-brokers

modules:
  - name: east
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted, dsn: "${EVENTBUS_EAST_URL}"}
  - name: west
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted, dsn: "${EVENTBUS_WEST_URL}"}
  - name: east-stream
    type: eventbus.stream
    dependsOn: [east]
    config: {name: EAST, broker_ref: east, subjects: ["east.>"]}
  - name: west-stream
    type: eventbus.stream
    dependsOn: [west]
    config: {name: WEST, broker_ref: west, subjects: ["west.>"]}
  - name: east-reader
    type: eventbus.consumer
    dependsOn: [east-stream]
    config: {name: east-reader, stream_name: EAST, broker_ref: east, filter_subject: east.in}
  - name: west-reader
    type: eventbus.consumer
    dependsOn: [west-stream]
    config: {name: west-reader, stream_name: WEST, broker_ref: west, filter_subject: west.in}

pipelines:
  east-to-west:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: east-reader, broker_ref: east}
    steps:
      - name: copy
        type: step.eventbus.publish
        config:
          subject: west.copied
          broker_ref: west
          headers: {event-id: "{{ .body.id }}"}
  west-to-east:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: west-reader, broker_ref: west}
    steps:
      - name: copy
        type: step.eventbus.publish
        config:
          subject: east.copied
          broker_ref: east
          headers: {event-id: "{{ .body.id }}"}
"""


async def test_broker_ref_routes_each_event_to_the_server_it_names(
    make_engine: MakeEngine, two_servers: tuple[str, str], tmp_path: Path
) -> None:
    east_url, west_url = two_servers
    config = tmp_path / "two-brokers.yaml"
    config.write_text(TWO_BROKERS_APP)
    engine = make_engine(config, {"EVENTBUS_EAST_URL": east_url, "EVENTBUS_WEST_URL": west_url})
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()

    east_nc, west_nc = await nats.connect(east_url), await nats.connect(west_url)
    try:
        east, west = east_nc.jetstream(), west_nc.jetstream()
        # Each stream exists on its own broker's server only.
        for js, absent in ((east, "WEST"), (west, "EAST")):
            with pytest.raises(NotFoundError):
                await js.stream_info(absent)

        east_ids = [f"e{i}" for i in range(30)]
        west_ids = [f"w{i}" for i in range(20)]
        east_last = west_last = 0
        for event_id in east_ids:
            east_last = (await east.publish("east.in", json.dumps({"id": event_id}).encode())).seq
        for event_id in west_ids:
            west_last = (await west.publish("west.in", json.dumps({"id": event_id}).encode())).seq

        async def both_drained() -> bool:
            return await _drained(east, "EAST", "east-reader", east_last) and await _drained(
                west, "WEST", "west-reader", west_last
            )

        await wait_for(
            both_drained, timeout=60, what="both pipelines to settle", check=engine.check_running
        )
        to_west = await _stored(west, "WEST", "west.copied")
        to_east = await _stored(east, "EAST", "east.copied")
        assert Counter(m.headers["event-id"] for m in to_west if m.headers) == Counter(east_ids)
        assert Counter(m.headers["event-id"] for m in to_east if m.headers) == Counter(west_ids)
        # Nothing crossed over the wrong way: each server holds only its own inputs
        # and the copies meant for it.
        east_state = (await east.stream_info("EAST")).state
        west_state = (await west.stream_info("WEST")).state
        assert east_state.messages == len(east_ids) + len(west_ids)
        assert west_state.messages == len(west_ids) + len(east_ids)
    finally:
        await east_nc.close()
        await west_nc.close()
    assert await engine.stop() == 0


# --- dead letters after backoff ---------------------------------------------------

# The pipeline publishes to the subject named by the event; "nowhere.x" is captured by
# no stream, so that publish fails, and with it the pipeline.
DLQ_APP = """\
name: eventbus-dead-letters

modules:
  - name: bus
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted, dsn: "${EVENTBUS_NATS_URL}"}
  - name: tasks-stream
    type: eventbus.stream
    dependsOn: [bus]
    config: {name: TASKS, subjects: ["tasks.>"]}
  - name: runner
    type: eventbus.consumer
    dependsOn: [tasks-stream]
    config:
      name: runner
      stream_name: TASKS
      filter_subject: tasks.in
      max_deliver: 3
      backoff: ["600ms", "1200ms"]

pipelines:
  run:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: runner, max_in_flight: 4}
    steps:
      - name: forward
        type: step.eventbus.publish
        config:
          subject: "{{ .body.route }}"
          headers: {task-id: "{{ .body.id }}"}
"""

DLQ_STREAM = "EVENTBUS_DEADLETTER"
DLQ_SUBJECT = "eventbus.deadletter.TASKS.runner"


async def test_a_failing_pipeline_goes_through_backoff_to_the_dead_letters(
    make_engine: MakeEngine, nats_server_fresh: EmbeddedNats, tmp_path: Path
) -> None:
    config = tmp_path / "dlq.yaml"
    config.write_text(DLQ_APP)
    engine = make_engine(config, {"EVENTBUS_NATS_URL": nats_server_fresh.url})
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()

    nc = await nats.connect(nats_server_fresh.url)
    try:
        js = nc.jetstream()
        good = [f"ok-{i}" for i in range(12)]
        bad = [f"bad-{i}" for i in range(3)]
        began = time.monotonic()
        last = 0
        for i, task in enumerate(good + bad):
            route = "nowhere.x" if task.startswith("bad") else "tasks.done"
            body = json.dumps({"id": task, "route": route, "n": i}).encode()
            last = (await js.publish("tasks.in", body)).seq

        async def dead_lettered() -> bool:
            try:
                return (await js.stream_info(DLQ_STREAM)).state.messages >= len(bad)
            except NotFoundError:
                return False

        await wait_for(
            dead_lettered, timeout=60, what="the dead-letter copies", check=engine.check_running
        )
        elapsed = time.monotonic() - began
        await wait_for(
            lambda: _drained(js, "TASKS", "runner", last),
            timeout=30,
            what="the runner consumer to settle everything",
            check=engine.check_running,
        )

        copies = await _stored(js, DLQ_STREAM, DLQ_SUBJECT)
        assert sorted(json.loads(m.data)["id"] for m in copies) == sorted(bad)
        for copy in copies:
            headers = copy.headers or {}
            assert headers["Eventbus-Dlq-Subject"] == "tasks.in"
            assert headers["Eventbus-Dlq-Consumer"] == "runner"
            assert headers["Eventbus-Dlq-Delivery-Count"] == "3"
            assert "nowhere.x" in headers["Eventbus-Dlq-Error"], headers
        # Three runs each (the backoff waits 0.6 s, then 1.2 s, between them): not a
        # bare nak burning max_deliver at once, and not the default 1 s, 5 s.
        assert 1.8 <= elapsed < 5.5, elapsed
        done = await _stored(js, "TASKS", "tasks.done")
        assert Counter(m.headers["task-id"] for m in done if m.headers) == Counter(good)
        info = await js.consumer_info("TASKS", "runner")
        assert info.num_redelivered == 0
        log = engine.log()
        assert log.count("Workflow 'pipeline:run' executed successfully") == len(good)
    finally:
        await nc.close()
    assert await engine.stop() == 0


# --- restarts over existing streams and consumers ---------------------------------


async def test_restarted_engine_reuses_its_streams_and_consumers_and_loses_nothing(
    make_engine: MakeEngine, nats_server_fresh: EmbeddedNats
) -> None:
    url = nats_server_fresh.url
    # One engine, one data dir, started three times.
    engine = make_engine(APPS / "replicas-nats.yaml", {"EVENTBUS_NATS_URL": url})
    nc = await nats.connect(url)
    seen: Counter[str] = Counter()

    async def collect(msg: nats.aio.msg.Msg) -> None:
        seen[(msg.headers or {})["event-id"]] += 1

    try:
        sub = await nc.subscribe("work.derived", cb=collect)
        await nc.flush()
        js = nc.jetstream()
        published: list[str] = []
        last = 0

        async def publish(prefix: str, count: int) -> None:
            nonlocal last
            ids = [f"{prefix}-{i}" for i in range(count)]
            acks = await asyncio.gather(
                *(js.publish("work.in", json.dumps({"id": i}).encode()) for i in ids)
            )
            published.extend(ids)
            last = max(last, *(a.seq for a in acks))

        async def settled() -> bool:
            return set(seen) == set(published) and await _drained(js, "WORK", "deriver", last)

        async def start() -> None:
            engine.start()
            await engine.wait_plugin_loaded()
            await engine.wait_started()

        await start()
        created = (await js.consumer_info("WORK", "deriver")).created
        await publish("first", 100)
        await wait_for(settled, timeout=60, what="the first batch", check=engine.check_running)
        assert await engine.stop() == 0

        # Published while no engine runs: kept by the stream for the next start.
        await publish("offline", 100)
        await start()
        await wait_for(settled, timeout=60, what="the offline batch", check=engine.check_running)
        assert "level=ERROR" not in engine.log(), engine.log_tail()

        # kill -9 mid-run (engine and plugin), then a third start.
        await publish("crash", 300)
        await wait_for(
            lambda: sum(1 for k in seen if k.startswith("crash")) >= 50,
            timeout=60,
            what="the crash batch to be under way",
            check=engine.check_running,
        )
        engine.crash()
        await start()
        await wait_for(settled, timeout=60, what="the crash batch", check=engine.check_running)
        assert "level=ERROR" not in engine.log(), engine.log_tail()
        await sub.unsubscribe()

        info = await js.consumer_info("WORK", "deriver")
        assert info.created == created  # the same consumer, never recreated
        assert (await js.stream_info("WORK")).config.subjects == ["work.>"]
        assert set(seen) == set(published)
        duplicates = sum(seen.values()) - len(seen)
        print(f"\n{len(published)} published, {sum(seen.values())} derived, {duplicates} dup")
        assert all(seen[k] == 1 for k in published if not k.startswith("crash"))
        assert duplicates <= 8  # what the killed engine held unacked (max_in_flight 4 x 2)
    finally:
        await nc.close()
    assert await engine.stop() == 0


# --- the incoming Nats-Msg-Id in a republished event -------------------------------

# Two republishes of each event into the stream it came from: one from the input as it
# is, one with a msg_id of its own (docs/scaling.md, "Republishing and dedup ids").
ECHO_APP = """\
name: eventbus-echo

modules:
  - name: bus
    type: eventbus.broker
    config: {provider: nats, deploy_target: self_hosted, dsn: "${EVENTBUS_NATS_URL}"}
  - name: echo-stream
    type: eventbus.stream
    dependsOn: [bus]
    config: {name: ECHO, subjects: ["echo.>"]}
  - name: echoer
    type: eventbus.consumer
    dependsOn: [echo-stream]
    config: {name: echoer, stream_name: ECHO, filter_subject: echo.in}

pipelines:
  echo:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: echoer}
    steps:
      # own-id first: a step's output joins the pipeline data, so after a publish
      # `.sequence` is that publish's sequence, not the incoming message's.
      - name: own-id
        type: step.eventbus.publish
        config: {subject: echo.own, msg_id: "echo-{{ .sequence }}"}
      - name: inherited
        type: step.eventbus.publish
        config: {subject: echo.inherited}
"""


async def test_a_republish_drops_the_incoming_msg_id_and_takes_the_steps_own(
    make_engine: MakeEngine, nats_server_fresh: EmbeddedNats, tmp_path: Path
) -> None:
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_APP)
    engine = make_engine(config, {"EVENTBUS_NATS_URL": nats_server_fresh.url})
    engine.start()
    await engine.wait_plugin_loaded()
    await engine.wait_started()
    nc = await nats.connect(nats_server_fresh.url)
    try:
        js = nc.jetstream()
        seqs = []
        for i in range(5):
            headers = {"Nats-Msg-Id": f"in-{i}"}
            seqs.append((await js.publish("echo.in", f"e{i}".encode(), headers=headers)).seq)
        last = seqs[-1]
        await wait_for(
            lambda: _drained(js, "ECHO", "echoer", last),
            timeout=30,
            what="the echo pipeline to settle every input",
            check=engine.check_running,
        )
        # Each pipeline succeeded and both copies are stored: the incoming dedup id is not
        # inherited (it made JetStream drop the first copy before it was dropped).
        assert engine.log().count("Workflow 'pipeline:echo' executed successfully") == 5
        inherited = await _stored(js, "ECHO", "echo.inherited")
        assert sorted(m.data for m in inherited) == [f"e{i}".encode() for i in range(5)]
        assert all("Nats-Msg-Id" not in (m.headers or {}) for m in inherited)
        own = await _stored(js, "ECHO", "echo.own")
        assert sorted(m.data for m in own) == [f"e{i}".encode() for i in range(5)]
        assert {(m.headers or {})["Nats-Msg-Id"] for m in own} == {f"echo-{seq}" for seq in seqs}
    finally:
        await nc.close()
    assert await engine.stop() == 0
