"""Modules, steps, trigger and the subscribe loop on the in-memory provider.

The same behaviour is checked against real servers in tests/integration and
tests/conformance; this file pins the provider-independent logic.
"""

import asyncio
import base64
import itertools
import json
import time
from datetime import UTC, datetime

import pytest
from google.protobuf import struct_pb2

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.deadletter import DLQ_DELIVERIES, DLQ_ERROR, DLQ_SUBJECT
from workflow_eventbus.core.errors import (
    BrokerUnavailableError,
    ConfigError,
    NotFoundError,
    RequestError,
)
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.steps import create_step
from workflow_eventbus.engine.trigger import (
    SubscribeTrigger,
    decode_body,
    fill_trigger_struct,
    parse_trigger_config,
    trigger_data,
)
from workflow_eventbus.providers.base import Delivery
from workflow_eventbus.providers.memory import MemoryBroker

_ids = itertools.count()


async def until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def bus():
    b = EventBus(environ={}, test_doubles=True)
    url = f"memory://t{next(_ids)}"
    mods = [
        b.create_module(
            "eventbus.consumer",
            "c",
            {"name": "worker", "stream_name": "ORDERS", "broker_ref": "bus"},
        ),
        b.create_module(
            "eventbus.stream",
            "s",
            {"name": "ORDERS", "subjects": ["orders.>"], "broker_ref": "bus"},
        ),
        b.create_module("eventbus.broker", "bus", {"provider": "memory", "dsn": url}),
    ]
    for m in mods:
        await m.init()
    for m in mods:  # consumer first: it starts its stream and broker itself
        await m.start()
    yield b
    await b.close()
    MemoryBroker.reset()


async def publish(bus, n, subject="orders.created", **kw):
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": subject, **kw})
    return [
        await step.execute(pb.PublishRequest(payload=json.dumps({"i": i}).encode()))
        for i in range(n)
    ]


async def test_module_start_order_does_not_matter_and_stop_is_idempotent(bus):
    assert bus.provider("bus").connected
    for m in list(bus.modules):
        await m.stop()
        await m.stop()
    assert not bus.brokers and not bus.streams and not bus.consumers


async def test_two_buses_do_not_share_registries():
    a, b = EventBus(environ={}, test_doubles=True), EventBus(environ={}, test_doubles=True)
    m = a.create_module("eventbus.broker", "bus", {"provider": "memory"})
    await m.start()
    assert "bus" in a.brokers and not b.brokers
    with pytest.raises(NotFoundError, match="no eventbus.broker module is registered"):
        b.provider()
    await a.close()


async def test_broker_ref_resolution_errors_list_brokers():
    b = EventBus(environ={}, test_doubles=True)
    for name in ("one", "two"):
        await b.create_module("eventbus.broker", name, {"provider": "memory"}).init()
    with pytest.raises(
        ConfigError, match=r"several brokers are registered \(\[one, two\]\); set broker_ref"
    ):
        b.broker()
    with pytest.raises(
        NotFoundError, match=r'"three" not registered; registered brokers: \[one, two\]'
    ):
        b.broker("three")
    with pytest.raises(BrokerUnavailableError, match="runtime not initialized"):
        b.provider("one")


async def test_nats_without_url_is_degraded_with_a_helpful_error():
    b = EventBus(environ={}, test_doubles=True)
    m = b.create_module(
        "infra.eventbus", "my-bus", {"provider": "nats", "deploy_target": "self_hosted"}
    )
    await m.start()
    with pytest.raises(BrokerUnavailableError, match="EVENTBUS_MY_BUS_URI or NATS_URL"):
        b.provider()


async def test_kinesis_declares_but_cannot_start():
    b = EventBus(environ={}, test_doubles=True)
    m = b.create_module(
        "eventbus.broker", "k", {"provider": "kinesis", "deploy_target": "aws.kinesis"}
    )
    with pytest.raises(ConfigError, match="IaC declarations only") as err:
        await m.start()
    assert "nats or pgchannel or kafka" in str(err.value)  # the providers that run


async def test_publish_config_wins_over_input(bus):
    step = create_step(
        bus, "step.eventbus.publish", "pub", {"subject": "orders.shipped", "headers": {"a": "cfg"}}
    )
    out = await step.execute(
        pb.PublishRequest(
            subject="orders.created",
            payload=b"x",
            headers={"a": "in", "b": "in"},
            correlation_id="c1",
        )
    )
    assert out.stream == "ORDERS" and out.sequence == "1"
    got = await bus.provider().fetch("ORDERS", "worker", 10, 0.1)
    assert got[0].subject == "orders.shipped"
    assert got[0].headers == {"a": "cfg", "b": "in", "Nats-Correlation-Id": "c1"}


async def test_publish_does_not_inherit_the_inputs_dedup_id(bus):
    # In a trigger pipeline the input carries the incoming message's Nats-Msg-Id: a
    # derived event published with it would be dropped as that message's duplicate.
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.derived"})
    incoming = {"Nats-Msg-Id": "in-1", "k": "v"}
    first = await step.execute(pb.PublishRequest(payload=b"a", headers=incoming))
    again = await step.execute(pb.PublishRequest(payload=b"b", headers=incoming))
    assert not first.duplicate and not again.duplicate and first.sequence != again.sequence
    # The step's own msg_id (input field or config) still deduplicates.
    own = await step.execute(pb.PublishRequest(payload=b"c", headers=incoming, msg_id="d-1"))
    dup = await step.execute(pb.PublishRequest(payload=b"c", headers=incoming, msg_id="d-1"))
    assert not own.duplicate and dup.duplicate and dup.sequence == own.sequence
    got = await bus.provider().fetch("ORDERS", "worker", 10, 0.1)
    assert len(got) == 3 and [d.headers.get("Nats-Msg-Id") for d in got[:2]] == [None, None]
    assert all(d.headers["k"] == "v" for d in got)


async def test_publish_requires_concrete_subject(bus):
    step = create_step(bus, "step.eventbus.publish", "pub", None)
    with pytest.raises(RequestError, match=r'step.eventbus.publish "pub": subject: is required'):
        await step.execute(pb.PublishRequest(payload=b"x"))
    with pytest.raises(ConfigError, match="wildcards are not allowed"):
        await step.execute(pb.PublishRequest(subject="orders.*"))


async def test_batch_publish_reports_per_message(bus):
    step = create_step(bus, "step.eventbus.publish", "pub", None)
    req = pb.PublishRequest(
        subject="orders.a",
        messages=[
            pb.PublishRequest(payload=b"1"),
            pb.PublishRequest(subject="nowhere.x"),
            pb.PublishRequest(payload=b"3", subject="orders.b"),
        ],
    )
    out = await step.execute(req)
    assert [r.sequence for r in out.results] == ["1", "", "2"]
    assert "no stream captures subject" in out.results[1].error
    assert out.error == "1 of 3 messages failed; see results[].error"


async def test_consume_and_ack_many(bus):
    await publish(bus, 5)
    consume = create_step(bus, "step.eventbus.consume", "c", {"consumer": "worker"})
    out = await consume.execute(pb.ConsumeRequest(batch_size=3))
    assert [m.sequence for m in out.messages] == ["1", "2", "3"]
    assert all(m.delivery_count == 1 and m.stream == "ORDERS" for m in out.messages)
    ack = create_step(bus, "step.eventbus.ack", "a", None)
    res = await ack.execute(pb.AckRequest(ack_tokens=[m.ack_token for m in out.messages]))
    assert res.count == 3
    assert await bus.provider().pending("ORDERS", "worker") == (2, 0)


async def test_consume_errors(bus):
    consume = create_step(bus, "step.eventbus.consume", "c", None)
    with pytest.raises(RequestError, match="consumer: is required"):
        await consume.execute(pb.ConsumeRequest())
    with pytest.raises(NotFoundError, match='add an eventbus.consumer module with name: "ghost"'):
        await consume.execute(pb.ConsumeRequest(consumer="ghost"))
    out = await consume.execute(
        pb.ConsumeRequest(consumer="worker", max_wait={"nanos": 50_000_000})
    )
    assert list(out.messages) == []


async def test_ack_requires_token(bus):
    ack = create_step(bus, "step.eventbus.ack", "a", None)
    with pytest.raises(RequestError, match="ack_token: is required"):
        await ack.execute(pb.AckRequest())


def test_trigger_aliases_canonical_wins_and_inheritance():
    b = EventBus(environ={}, test_doubles=True)
    b.create_module(
        "eventbus.consumer",
        "c",
        {"name": "runner", "stream_name": "S", "broker_ref": "bus", "max_deliver": 4},
    )
    for m in b.modules:
        asyncio.run(m.init())
    cfg = parse_trigger_config(
        b, {"consumer": "runner", "bus": "other", "workflowType": "pipeline:p"}
    )
    assert (cfg.name, cfg.stream_name, cfg.broker_ref, cfg.max_deliver) == (
        "runner",
        "S",
        "other",
        4,
    )
    cfg = parse_trigger_config(
        b, {"name": "runner", "consumer": 7, "broker_ref": "bus", "bus": "x"}
    )
    assert cfg.name == "runner" and cfg.broker_ref == "bus"
    with pytest.raises(ConfigError, match=r"config\[consumer\]: must be a string, got number"):
        parse_trigger_config(b, {"consumer": 7})
    with pytest.raises(ConfigError, match=r"config\[name\]: must be a string, got boolean"):
        parse_trigger_config(b, {"name": True, "consumer": "runner"})
    with pytest.raises(ConfigError, match="name: is required"):
        parse_trigger_config(b, {"stream_name": "S"})
    with pytest.raises(ConfigError, match="stream_name: is required"):
        parse_trigger_config(b, {"consumer": "unregistered"})
    with pytest.raises(ConfigError, match="unknown key for ConsumerConfig"):
        parse_trigger_config(b, {"consumer": "runner", "colour": "red"})


async def test_trigger_delivers_data_and_acks(bus):
    await publish(bus, 3, correlation_id="abc")
    seen = []

    async def handler(data):
        seen.append(data)

    trig = SubscribeTrigger.from_trigger_config(bus, "pipeline:p", {"consumer": "worker"}, handler)
    await trig.start()
    await until(lambda: len(seen) == 3)
    await trig.stop()
    first = seen[0]
    assert set(first) == {
        "subject",
        "payload",
        "headers",
        "sequence",
        "published_at",
        "ack_token",
        "body",
        "delivery_count",
        "stream",
        "consumer",
    }
    assert base64.b64decode(first["payload"]) == b'{"i": 0}' and first["body"] == {"i": 0}
    assert first["headers"] == {"Nats-Correlation-Id": "abc"} and first["sequence"] == "1"
    assert [d["sequence"] for d in seen] == ["1", "2", "3"]  # max_in_flight 1 keeps order
    assert await bus.provider().pending("ORDERS", "worker") == (0, 0)


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (b'{"order": 1, "items": [1, "a", null, true], "nested": {"x": 1.5}}', {}),
        (b'{"a": null, "b": true, "c": {}, "d": {"e": [{"f": null}], "g": false}, "h": 1e300}', {}),
        ('{"\u00e9": "\u00fc", "n": {"deep": {"deeper": {"s": "t", "z": 0}}}}'.encode(), {}),
        (b'[1, {"a": "b"}, []]', {"k": "v", "Nats-Msg-Id": "m-1"}),
        (b'"just a string"', {}),
        (b"{}", {}),
        (b"42", {}),
        (b"false", {}),
        (b"null", {}),
        (b"plain text, not JSON", {"content-type": "text/plain"}),
        (b"\xff\xfe binary", {}),
        (b"", {}),
    ],
)
def test_trigger_struct_is_the_data_map(payload: bytes, headers: dict[str, str]) -> None:
    """The plugin's direct encoder sends exactly what trigger_data describes."""
    delivery = Delivery(
        "S",
        "C",
        "orders.created",
        payload,
        headers,
        7,
        datetime.now(UTC),
        2,
        "$JS.ACK.S.C.2.7.7.1.0",
    )
    direct = struct_pb2.Struct()
    fill_trigger_struct(delivery, direct)
    expected = struct_pb2.Struct()
    expected.update(trigger_data(delivery))
    assert direct == expected
    assert ("body" in direct.fields) == (decode_body(payload) is not None)


async def test_ack_step_leaves_the_triggers_own_message_to_the_trigger(bus):
    # A pipeline whose pull found nothing passes its trigger data (the triggering
    # message's ack_token) to an ack step; acking it there would lose the message
    # when a later step fails (the trigger's nak would come too late).
    await publish(bus, 1)
    ack = create_step(bus, "step.eventbus.ack", "ack")
    answers, runs = [], []

    async def handler(data):
        runs.append(data["delivery_count"])
        answers.append(await ack.execute(pb.AckRequest(ack_token=data["ack_token"])))
        if data["delivery_count"] == 1:
            raise RuntimeError("a later step fails")

    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"consumer": "worker", "backoff": ["10ms"]}, handler
    )
    await trig.start()
    await until(lambda: trig.subscription.stats.acked == 1)
    await trig.stop()
    assert runs == [1, 2]  # redelivered after the failure: not lost
    assert [a.count for a in answers] == [0, 0]
    assert not bus.subscriptions  # the stopped trigger holds nothing any more


async def test_ack_step_settles_a_trigger_message_named_in_its_config(bus):
    await publish(bus, 1)
    answers = []

    async def handler(data):
        ack = create_step(bus, "step.eventbus.ack", "ack", {"ack_token": data["ack_token"]})
        answers.append(await ack.execute())

    trig = SubscribeTrigger.from_trigger_config(bus, "p", {"consumer": "worker"}, handler)
    await trig.start()
    await until(lambda: len(answers) == 1 and trig.subscription.stats.fetched == 1)
    await trig.stop()
    assert answers[0].count == 1
    assert await bus.provider().pending("ORDERS", "worker") == (0, 0)


async def test_backoff_then_dead_letter_then_term(bus):
    await bus.provider().ensure_stream(pb.StreamConfig(name="DLQ", subjects=["dlq.orders"]))
    await publish(bus, 1)
    attempts = []

    async def handler(data):
        attempts.append((time.monotonic(), data["delivery_count"]))
        raise RuntimeError("handler says no")

    cfg = {
        "consumer": "worker",
        "max_deliver": 3,
        "backoff": ["50ms", "200ms"],
        "dead_letter_subject": "dlq.orders",
    }
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    await trig.start()
    await until(lambda: trig.subscription.stats.dead_lettered == 1)
    await trig.stop()
    assert [c for _, c in attempts] == [1, 2, 3]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.2
    await bus.provider().ensure_consumer(pb.ConsumerConfig(name="dlq", stream_name="DLQ"))
    dead = await bus.provider().fetch("DLQ", "dlq", 10, 0.2)
    assert len(dead) == 1
    assert dead[0].headers[DLQ_SUBJECT] == "orders.created"
    assert (
        dead[0].headers[DLQ_DELIVERIES] == "3" and dead[0].headers[DLQ_ERROR] == "handler says no"
    )
    assert dead[0].payload == b'{"i": 0}'
    assert await bus.provider().pending("ORDERS", "worker") == (0, 0)


async def test_failed_dead_letter_keeps_the_message(bus):
    await publish(bus, 1)

    async def handler(data):
        raise RuntimeError("no")

    cfg = {
        "consumer": "worker",
        "max_deliver": 2,
        "backoff": ["10ms"],
        "dead_letter_subject": "nowhere.dlq",
    }
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    await trig.start()
    await until(lambda: trig.subscription.stats.nakked >= 2)
    await trig.stop()
    assert trig.subscription.stats.dead_lettered == 0
    # Never acked, never terminated: still owned by the consumer.
    assert await bus.provider().pending("ORDERS", "worker") != (0, 0)


async def test_concurrency_is_bounded(bus):
    await publish(bus, 12)
    running, peak, done = 0, 0, []

    async def handler(data):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        done.append(data["sequence"])

    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"consumer": "worker", "max_in_flight": 4}, handler
    )
    await trig.start()
    await until(lambda: len(done) == 12)
    await trig.stop()
    assert 1 < peak <= 4


async def test_backlog_is_fetched_ahead_in_order(bus):
    """max_in_flight 1: the next message is leased while one runs; order is kept."""
    await publish(bus, 6)
    order, fetched_while_running = [], []
    trig = None

    async def handler(data):
        await asyncio.sleep(0.01)  # the fetch ahead runs meanwhile
        fetched_while_running.append(trig.subscription.stats.fetched)
        order.append(int(data["sequence"]))

    trig = SubscribeTrigger.from_trigger_config(bus, "p", {"consumer": "worker"}, handler)
    await trig.start()
    await until(lambda: len(order) == 6)
    await trig.stop()
    assert order == [1, 2, 3, 4, 5, 6]
    # While message n ran, message n+1 had been fetched already (the last has no next).
    assert fetched_while_running[:5] == [2, 3, 4, 5, 6]
    assert trig.subscription.stats.acked == 6


async def test_busy_handlers_leave_at_most_one_window_leased_ahead(bus):
    """max_in_flight 4, every handler stuck: 4 run, 4 wait leased, nothing more."""
    await publish(bus, 20)
    running = []

    async def handler(data):
        running.append(data["sequence"])
        await asyncio.Event().wait()

    cfg = {"consumer": "worker", "max_in_flight": 4, "drain_timeout": "50ms"}
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    await trig.start()
    await until(lambda: len(running) == 4)
    await asyncio.sleep(0.2)  # room for any further fetch ahead
    fetched = trig.subscription.stats.fetched
    await trig.stop()
    assert fetched == 8


async def test_stop_drains_in_flight_and_naks_what_cannot_finish(bus):
    await publish(bus, 2)
    started = asyncio.Event()

    async def handler(data):
        started.set()
        await asyncio.sleep(10)

    cfg = {"consumer": "worker", "drain_timeout": "100ms", "max_in_flight": 2}
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    await trig.start()
    await started.wait()
    t0 = time.monotonic()
    await trig.stop()
    assert time.monotonic() - t0 < 2
    assert not trig.subscription.running
    # Nak'd back: both are immediately deliverable again, none was acked.
    again = await bus.provider().fetch("ORDERS", "worker", 10, 0.5)
    assert sorted(d.sequence for d in again) == [1, 2]
    assert all(d.delivery_count == 2 for d in again)


async def test_long_handler_sends_in_progress(bus):
    await bus.provider().ensure_consumer(
        pb.ConsumerConfig(name="slow", stream_name="ORDERS", ack_wait={"nanos": 200_000_000})
    )
    await publish(bus, 1)
    calls = []

    async def handler(data):
        calls.append(data["delivery_count"])
        await asyncio.sleep(0.7)  # far beyond the 200 ms ack wait

    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"name": "slow", "stream_name": "ORDERS", "ack_wait": "200ms"}, handler
    )
    await trig.start()
    await until(lambda: trig.subscription.stats.acked == 1)
    await trig.stop()
    assert calls == [1]  # never redelivered while it ran


async def test_steps_start_initialised_modules_when_nobody_did():
    """wfctl pipeline run creates and initialises modules but never starts them."""
    b = EventBus(environ={}, test_doubles=True)
    mods = [
        b.create_module(
            "eventbus.broker", "bus", {"provider": "memory", "dsn": f"memory://lazy{next(_ids)}"}
        ),
        b.create_module("eventbus.stream", "s", {"name": "LAZY", "subjects": ["lazy.>"]}),
        b.create_module("eventbus.consumer", "c", {"name": "w", "stream_name": "LAZY"}),
    ]
    for m in mods:
        await m.init()
    out = await create_step(b, "step.eventbus.publish", "p", {"subject": "lazy.x"}).execute()
    assert out.stream == "LAZY"
    assert all(m.started for m in mods)
    got = await create_step(b, "step.eventbus.consume", "c", {"consumer": "w"}).execute()
    assert len(got.messages) == 1
    await b.close()


async def test_oversized_batches_are_refused(bus):
    pub = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.x"})
    with pytest.raises(RequestError, match="1001 items in one call; at most 1000"):
        await pub.execute(pb.PublishRequest(messages=[pb.PublishRequest()] * 1001))
    ack = create_step(bus, "step.eventbus.ack", "a", None)
    with pytest.raises(RequestError, match="ack_tokens: 1001 items"):
        await ack.execute(pb.AckRequest(ack_tokens=["t"] * 1001))
