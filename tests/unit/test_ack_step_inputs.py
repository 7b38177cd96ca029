"""step.eventbus.ack: which tokens it settles, from the config or from each input form.

The engine builds the step's typed input (AckRequest) from the pipeline's current data,
so after a step.eventbus.consume that input carries the consumed ``messages`` and, in a
trigger pipeline, the triggering message's ``ack_token`` as well.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import RequestError
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.steps import create_step
from workflow_eventbus.providers.memory import MemoryBroker

_ids = itertools.count()


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    b = EventBus(environ={}, test_doubles=True)
    mods = [
        b.create_module(
            "eventbus.broker", "bus", {"provider": "memory", "dsn": f"memory://a{next(_ids)}"}
        ),
        b.create_module("eventbus.stream", "s", {"name": "JOBS", "subjects": ["jobs.>"]}),
        b.create_module("eventbus.consumer", "c", {"name": "worker", "stream_name": "JOBS"}),
    ]
    for m in mods:
        await m.init()
    for m in mods:
        await m.start()
    yield b
    await b.close()
    MemoryBroker.reset()


async def _consume(bus: EventBus, published: int, batch: int) -> pb.ConsumeResponse:
    pub = create_step(bus, "step.eventbus.publish", "pub", {"subject": "jobs.x"})
    for i in range(published):
        await pub.execute(pb.PublishRequest(payload=json.dumps({"i": i}).encode()))
    consume = create_step(bus, "step.eventbus.consume", "pull", {"consumer": "worker"})
    out: pb.ConsumeResponse = await consume.execute(pb.ConsumeRequest(batch_size=batch))
    return out


async def test_the_consume_output_settles_every_message(bus: EventBus) -> None:
    pulled = await _consume(bus, 5, 3)
    assert len(pulled.messages) == 3
    ack = create_step(bus, "step.eventbus.ack", "ack", None)
    # The input exactly as the consume step answered it (what the engine passes on).
    out = await ack.execute(pb.AckRequest(messages=pulled.messages))
    assert out.count == 3
    assert await bus.provider().pending("JOBS", "worker") == (2, 0)


async def test_messages_win_over_the_inputs_own_token(bus: EventBus) -> None:
    # A trigger pipeline: the input's ack_token is the triggering message's; the
    # consumed messages are the ones this step settles.
    pulled = await _consume(bus, 3, 3)
    first, rest = pulled.messages[0], pulled.messages[1:]
    ack = create_step(bus, "step.eventbus.ack", "ack", None)
    out = await ack.execute(pb.AckRequest(ack_token=first.ack_token, messages=rest))
    assert out.count == 2
    assert await bus.provider().pending("JOBS", "worker") == (0, 1)


async def test_the_config_token_wins_over_messages(bus: EventBus) -> None:
    pulled = await _consume(bus, 2, 2)
    one = pulled.messages[0].ack_token
    ack = create_step(bus, "step.eventbus.ack", "ack", {"ack_token": one, "action": "term"})
    out = await ack.execute(pb.AckRequest(messages=pulled.messages))
    assert out.count == 1
    assert await bus.provider().pending("JOBS", "worker") == (0, 1)


async def test_messages_with_a_nak_action_come_back(bus: EventBus) -> None:
    pulled = await _consume(bus, 2, 2)
    ack = create_step(bus, "step.eventbus.ack", "ack", {"action": "nak"})
    assert (await ack.execute(pb.AckRequest(messages=pulled.messages))).count == 2
    again = await _consume(bus, 0, 10)
    assert sorted(m.sequence for m in again.messages) == ["1", "2"]
    assert all(m.delivery_count == 2 for m in again.messages)


async def test_no_token_anywhere_names_every_way_to_pass_one(bus: EventBus) -> None:
    ack = create_step(bus, "step.eventbus.ack", "ack", None)
    with pytest.raises(RequestError, match="ack_token: is required") as caught:
        await ack.execute(pb.AckRequest(messages=[pb.Message(subject="jobs.x")]))
    assert "step.eventbus.consume" in str(caught.value)
    assert "if:" in str(caught.value)
