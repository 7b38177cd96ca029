"""One subject grammar on every provider: a comma in ``filter_subject`` lists patterns.

The same consumer config must select the same messages on NATS (JetStream's
``filter_subjects``), pgchannel (one SQL regular expression) and the memory
double; a comma anywhere else is refused before any provider sees it.
"""

from __future__ import annotations

import pytest
from harness import Harness, fetch_until

from workflow_eventbus import ConfigError
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.validation import validate_consumer, validate_stream
from workflow_eventbus.providers.base import OutboundMessage


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("filter_subject", "wanted"),
    [
        ("{r}.a, {r}.c", ["a", "c"]),  # a list of two literal subjects, blank after ','
        ("{r}.b.*,{r}.a", ["a", "b.x"]),  # a wildcard and a literal
        ("{r}.>", ["a", "b.x", "c", "d.y.z"]),  # one pattern, no comma
        ("{r}.d.>, {r}.nothing", ["d.y.z"]),  # one entry matches nothing
    ],
)
async def test_filter_list_selects_the_same_messages(
    bus: Harness, filter_subject: str, wanted: list[str]
) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, filter_subject=filter_subject.format(r=root))
    for suffix in ("a", "b.x", "c", "d.y.z"):
        await bus.provider.publish(OutboundMessage(f"{root}.{suffix}", suffix.encode()))
    got = await fetch_until(bus.provider, stream, durable, len(wanted), ack=True)
    assert sorted(d.payload.decode() for d in got) == sorted(wanted)
    assert await bus.provider.fetch(stream, durable, 10, 0.5) == []


@pytest.mark.asyncio(loop_scope="session")
async def test_same_filter_list_twice_is_the_same_consumer(bus: Harness) -> None:
    stream, root = await bus.stream()
    flt = f"{root}.a, {root}.c"
    durable = await bus.consumer(stream, filter_subject=flt)
    # Declaring it again with the same list (spacing aside) is idempotent, not a conflict.
    await bus.consumer(stream, name=durable, filter_subject=f"{root}.a,{root}.c")


@pytest.mark.parametrize(
    "bad",
    [
        pb.StreamConfig(name="S", subjects=["orders.a,orders.b"]),
        pb.ConsumerConfig(name="c", stream_name="S", dead_letter_subject="dl.a,dl.b"),
        pb.ConsumerConfig(name="c", stream_name="S", filter_subject="orders.a,,orders.x y"),
        pb.ConsumerConfig(name="c", stream_name="S", filter_subject=" , "),
    ],
)
def test_comma_outside_a_filter_list_is_refused_everywhere(bad: object) -> None:
    with pytest.raises(ConfigError) as err:
        if isinstance(bad, pb.StreamConfig):
            validate_stream("s", bad)
        else:
            assert isinstance(bad, pb.ConsumerConfig)
            validate_consumer("c", bad)
    text = str(err.value)
    assert "subjects[0]" in text or "dead_letter_subject" in text or "filter_subject" in text
