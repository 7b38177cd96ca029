"""The ``admin`` capability (the IaC provider's read, diff and delete), the same on
every provider that declares it."""

from __future__ import annotations

import pytest
from harness import Harness, fetch_until

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.providers.base import OutboundMessage
from workflow_eventbus.providers.capabilities import require_admin

pytestmark = pytest.mark.needs("admin")


async def test_stream_drift_is_none_empty_or_the_changed_settings(bus: Harness) -> None:
    admin = require_admin(bus.provider)
    assert await admin.stream_drift(pb.StreamConfig(name="S_absent", subjects=["zz.>"])) is None
    name, root = await bus.stream(max_age=to_duration(3600))
    live = pb.StreamConfig(name=name, subjects=[f"{root}.>"], max_age=to_duration(3600))
    assert await admin.stream_drift(live) == []
    wanted = pb.StreamConfig(name=name, subjects=[f"{root}.>"], max_age=to_duration(7200))
    [drift] = await admin.stream_drift(wanted)
    assert (drift.setting, drift.current, drift.desired, drift.immutable) == (
        "max_age",
        "3600s",
        "7200s",
        False,
    )
    await bus.provider.ensure_stream(wanted)  # what apply does with an update
    assert await admin.stream_drift(wanted) == []


async def test_consumer_drift_marks_what_cannot_change_in_place(bus: Harness) -> None:
    admin = require_admin(bus.provider)
    stream, _ = await bus.stream()
    durable = await bus.consumer(stream, max_deliver=5)

    def cfg(**kw: object) -> pb.ConsumerConfig:
        fields: dict[str, object] = {
            "deliver_policy": pb.DELIVER_POLICY_ALL,
            "ack_policy": pb.ACK_POLICY_EXPLICIT,
            "ack_wait": to_duration(30.0),
            "max_deliver": 5,
            **kw,
        }
        return pb.ConsumerConfig(name=durable, stream_name=stream, **fields)  # type: ignore[arg-type]

    assert await admin.consumer_drift(cfg()) == []
    assert await admin.consumer_drift(pb.ConsumerConfig(name="absent", stream_name=stream)) is None
    [drift] = await admin.consumer_drift(cfg(max_deliver=9))
    assert (drift.setting, drift.current, drift.desired, drift.immutable) == (
        "max_deliver",
        "5",
        "9",
        False,
    )
    drifts = {
        d.setting: d
        for d in await admin.consumer_drift(cfg(deliver_policy=pb.DELIVER_POLICY_NEW)) or []
    }
    assert drifts["deliver_policy"].immutable, drifts


async def test_delete_is_idempotent_and_a_deleted_stream_can_be_made_again(
    bus: Harness,
) -> None:
    admin = require_admin(bus.provider)
    name, root = await bus.stream()
    durable = await bus.consumer(name)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    assert await admin.delete_consumer(name, durable) is True
    assert await admin.delete_consumer(name, durable) is False
    assert await admin.delete_stream(name) is True
    assert await admin.delete_stream(name) is False
    assert await admin.stream_drift(pb.StreamConfig(name=name, subjects=[f"{root}.>"])) is None
    await bus.provider.ensure_stream(pb.StreamConfig(name=name, subjects=[f"{root}.>"]))
    again = await bus.consumer(name)
    await bus.provider.publish(OutboundMessage(f"{root}.b", b"y"))
    got = await fetch_until(bus.provider, name, again, 1, timeout=5.0)
    assert [d.payload for d in got] == [b"y"]  # the old message went with the old stream


async def test_deleting_a_stream_takes_its_consumers(bus: Harness) -> None:
    admin = require_admin(bus.provider)
    name, _ = await bus.stream()
    durable = await bus.consumer(name)
    assert await admin.delete_stream(name) is True
    assert await admin.consumer_drift(pb.ConsumerConfig(name=durable, stream_name=name)) is None
