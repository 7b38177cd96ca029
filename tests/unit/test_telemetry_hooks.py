"""The telemetry hooks see each event of a message's life once, with bounded labels."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from workflow_eventbus import EventBus, SubscribeTrigger, create_step
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.engine.telemetry import OFF, Fanout, Labels, Telemetry, combine
from workflow_eventbus.providers.base import AckAction, Delivery
from workflow_eventbus.providers.memory import MemoryBroker

_ids = itertools.count()


class Recorder(Telemetry):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def before_publish(
        self, headers: MutableMapping[str, str], parent: Mapping[str, str] | None = None
    ) -> Any:
        headers["x-recorded"] = "1"  # a tracer writes its context here
        return len(self.events)

    def after_publish(
        self, token: Any, broker: str, stream: str, count: int, error: str | None
    ) -> None:
        self.events.append(("published", broker, stream, count, error is None))

    def delivered(self, labels: Labels, delivery: Delivery) -> None:
        self.events.append(("delivered", labels, delivery.delivery_count))

    def handler_started(self, labels: Labels, delivery: Delivery) -> Any:
        return ("token", delivery.delivery_count)

    def handler_finished(
        self, token: Any, labels: Labels, seconds: float, error: str | None
    ) -> None:
        assert token[0] == "token" and seconds >= 0
        self.events.append(("handled", labels, token[1], error))

    def settled(self, labels: Labels, action: AckAction, count: int = 1) -> None:
        self.events.append(("settled", labels, action, count))

    def dead_lettered(self, labels: Labels) -> None:
        self.events.append(("dead_lettered", labels))


async def _bus(recorder: Telemetry) -> EventBus:
    bus = EventBus(environ={}, test_doubles=True, telemetry=recorder)
    url = f"memory://tel{next(_ids)}"
    for module in (
        bus.create_module("eventbus.broker", "bus", {"provider": "memory", "dsn": url}),
        bus.create_module("eventbus.stream", "s", {"name": "ORDERS", "subjects": ["orders.>"]}),
        bus.create_module("eventbus.consumer", "c", {"name": "worker", "stream_name": "ORDERS"}),
    ):
        await module.start()
    return bus


async def _until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_publish_consume_retry_and_dead_letter_are_each_seen_once() -> None:
    rec = Recorder()
    bus = await _bus(rec)
    try:
        step = create_step(bus, "step.eventbus.publish", "pub", {"subject": "orders.created"})
        await step.execute(pb.PublishRequest(payload=b"{}"))
        await step.execute(pb.PublishRequest(messages=[pb.PublishRequest(payload=b"{}")]))
        assert rec.events == [("published", "bus", "ORDERS", 1, True)] * 2

        seen_headers: list[dict[str, str]] = []

        async def handler(data: dict[str, Any]) -> None:
            seen_headers.append(data["headers"])
            if data["delivery_count"] < 3:
                raise RuntimeError("not yet")

        await bus.provider().ensure_stream(pb.StreamConfig(name="DLQ", subjects=["dlq.x"]))
        trig = SubscribeTrigger.from_trigger_config(
            bus,
            "p",
            {
                "consumer": "worker",
                "max_deliver": 2,
                "backoff": ["20ms"],
                "dead_letter_subject": "dlq.x",
            },
            handler,
        )
        rec.events.clear()
        await trig.start()
        assert trig.subscription is not None
        await _until(lambda: trig.subscription.stats.dead_lettered == 2)  # type: ignore[union-attr]
        await trig.stop()
    finally:
        await bus.close()
        MemoryBroker.reset()
    labels = Labels("bus", "ORDERS", "worker")
    assert all(h.get("x-recorded") == "1" for h in seen_headers)  # hook wrote the headers
    kinds = [e[0] for e in rec.events]
    assert kinds.count("delivered") == 4 and kinds.count("handled") == 4
    assert kinds.count("dead_lettered") == 2
    assert {e[1] for e in rec.events} == {labels}
    redelivered = [e for e in rec.events if e[0] == "delivered" and e[2] > 1]
    assert len(redelivered) == 2
    failures = [e for e in rec.events if e[0] == "handled"]
    assert all(e[3] == "not yet" for e in failures)
    actions = [e[2] for e in rec.events if e[0] == "settled"]
    assert actions.count(AckAction.NAK) == 2 and actions.count(AckAction.TERM) == 2


def test_combine_and_fanout() -> None:
    assert combine([None, None]) is OFF
    one = Recorder()
    assert combine([None, one]) is one
    a, b = Recorder(), Recorder()
    both = combine([a, b])
    assert isinstance(both, Fanout)
    labels = Labels("b", "s", "c")
    token = both.handler_started(labels, _delivery())
    both.handler_finished(token, labels, 0.1, None)
    both.after_publish(both.before_publish({}), "b", "s", 1, None)
    assert a.events == b.events == [("handled", labels, 1, None), ("published", "b", "s", 1, True)]


def _delivery() -> Delivery:
    from datetime import UTC, datetime

    return Delivery("s", "c", "x", b"", {}, 1, datetime.now(UTC), 1, "t")


async def test_plugin_flushes_telemetry_once_triggers_drained() -> None:
    from workflow_eventbus.plugin.broker import ConnInfoStore
    from workflow_eventbus.plugin.callbacks.client import CallbackClient
    from workflow_eventbus.plugin.servicer import FLUSH_BUDGET, PluginService

    flushed: list[float] = []

    class Flushing(Telemetry):
        async def aflush(self, timeout: float) -> None:
            flushed.append(timeout)

    bus = EventBus(environ={}, test_doubles=True, telemetry=Flushing())
    service = PluginService(CallbackClient(ConnInfoStore()), bus)
    await service.drain_triggers()
    await service.drain_triggers(budget=0.3)
    await service.drain_triggers(budget=0.0)  # nothing left of the host's deadline
    assert flushed[0] == FLUSH_BUDGET and 0 < flushed[1] <= 0.3 and len(flushed) == 2
    await service.callbacks.close()
