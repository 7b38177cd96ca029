"""Provider conformance: the same behaviour on NATS, pgchannel and the memory double.

Every test runs once per provider kind. A provider skips only what its
``features`` declare it lacks (for example ``RESTART`` on the memory double);
tests of an optional capability (dead letters, pending counts) are marked
``needs(<feature>)`` and run on every provider that declares it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from harness import Harness, eventually, fetch_until

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.core.deadletter import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_ERROR,
    DLQ_PUBLISHED_AT,
    DLQ_SEQUENCE,
    DLQ_STREAM,
    DLQ_SUBJECT,
    dead_letter_msg_id,
    default_dead_letter_subject,
)
from workflow_eventbus.core.errors import (
    ConflictError,
    EventbusError,
    NotFoundError,
    RequestError,
)
from workflow_eventbus.core.headers import CORRELATION_HEADER
from workflow_eventbus.providers.base import (
    AckAction,
    Delivery,
    Feature,
    OutboundMessage,
    PublishResult,
)
from workflow_eventbus.providers.capabilities import require_dead_letters, require_pending

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _need(bus: Harness, feature: Feature) -> None:
    if feature not in bus.provider.features:
        pytest.skip(f"{bus.kind} declares no {feature.value} feature")


async def test_publish_then_fetch_in_order(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream)
    sent = [
        await bus.provider.publish(OutboundMessage(f"{root}.a", f"m{i}".encode())) for i in range(3)
    ]
    assert [r.stream for r in sent] == [stream] * 3
    assert sent[0].sequence < sent[1].sequence < sent[2].sequence
    got = await fetch_until(bus.provider, stream, durable, 3)
    assert [d.payload for d in got] == [b"m0", b"m1", b"m2"]
    assert [d.sequence for d in got] == [r.sequence for r in sent]
    assert {(d.stream, d.consumer, d.subject, d.delivery_count) for d in got} == {
        (stream, durable, f"{root}.a", 1)
    }
    assert len({d.ack_token for d in got}) == 3


async def test_fetch_times_out_empty(bus: Harness) -> None:
    stream, _ = await bus.stream()
    durable = await bus.consumer(stream)
    start = time.monotonic()
    assert await bus.provider.fetch(stream, durable, 5, 0.5) == []
    assert 0.4 <= time.monotonic() - start < 5.0


async def test_ack_is_final_and_per_message(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=1.0)
    for i in range(3):
        await bus.provider.publish(OutboundMessage(f"{root}.a", f"m{i}".encode()))
    got = await fetch_until(bus.provider, stream, durable, 3)
    # Ack only the last one: the earlier two must come back (acks are not cumulative).
    await bus.provider.settle([got[2].ack_token], AckAction.ACK)
    again = await fetch_until(bus.provider, stream, durable, 2, timeout=6.0)
    assert sorted(d.sequence for d in again) == sorted(d.sequence for d in got[:2])
    assert all(d.delivery_count == 2 for d in again)
    await bus.provider.settle([d.ack_token for d in again], AckAction.ACK)
    assert await bus.provider.fetch(stream, durable, 10, 1.5) == []


async def test_nak_redelivers_at_once(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=30.0)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await fetch_until(bus.provider, stream, durable, 1)
    await bus.provider.settle([first.ack_token], AckAction.NAK)
    start = time.monotonic()
    (second,) = await fetch_until(bus.provider, stream, durable, 1, timeout=5.0)
    assert time.monotonic() - start < 3.0
    assert (second.sequence, second.delivery_count) == (first.sequence, 2)


async def test_nak_with_delay(bus: Harness) -> None:
    _need(bus, Feature.NAK_DELAY)
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=30.0)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await fetch_until(bus.provider, stream, durable, 1)
    start = time.monotonic()
    await bus.provider.settle([first.ack_token], AckAction.NAK, delay=1.5)
    assert await bus.provider.fetch(stream, durable, 1, 0.5) == []
    (second,) = await fetch_until(bus.provider, stream, durable, 1, timeout=6.0)
    assert time.monotonic() - start >= 1.3
    assert second.delivery_count == 2


async def test_term_is_never_redelivered(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=1.0)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await fetch_until(bus.provider, stream, durable, 1)
    await bus.provider.settle([first.ack_token], AckAction.TERM)
    assert await bus.provider.fetch(stream, durable, 1, 2.0) == []


async def test_redelivery_after_ack_wait(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=1.0)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await fetch_until(bus.provider, stream, durable, 1)
    start = time.monotonic()
    assert await bus.provider.fetch(stream, durable, 1, 0.3) == []
    (again,) = await fetch_until(bus.provider, stream, durable, 1, timeout=6.0)
    assert time.monotonic() - start >= 0.6
    assert (again.sequence, again.delivery_count) == (first.sequence, 2)


async def test_in_progress_extends_the_lease(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=2.0)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await fetch_until(bus.provider, stream, durable, 1)
    await asyncio.sleep(1.2)  # part of the ack wait passes while "working"
    await bus.provider.settle([first.ack_token], AckAction.IN_PROGRESS)
    assert await bus.provider.fetch(stream, durable, 1, 1.4) == []  # old lease would end at 2.0
    (again,) = await fetch_until(bus.provider, stream, durable, 1, timeout=6.0)
    assert again.delivery_count == 2


async def test_max_deliver_stops_redelivery(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=1.0, max_deliver=2)
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"poison"))
    counts = []
    for _ in range(2):
        (d,) = await fetch_until(bus.provider, stream, durable, 1, timeout=5.0)
        counts.append(d.delivery_count)
        await bus.provider.settle([d.ack_token], AckAction.NAK)
    assert counts == [1, 2]  # the last allowed delivery is still handed out
    assert await bus.provider.fetch(stream, durable, 1, 2.0) == []
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"next"))
    (after,) = await fetch_until(bus.provider, stream, durable, 1)
    assert after.payload == b"next"


async def test_filter_subjects_with_wildcards(bus: Harness) -> None:
    stream, root = await bus.stream()
    one = await bus.consumer(stream, filter_subject=f"{root}.a.*")
    rest = await bus.consumer(stream, filter_subject=f"{root}.a.>")
    for subject in ("a.x", "b.x", "a.x.y", "a"):
        await bus.provider.publish(OutboundMessage(f"{root}.{subject}", subject.encode()))
    got_one = await fetch_until(bus.provider, stream, one, 1)
    got_rest = await fetch_until(bus.provider, stream, rest, 2)
    assert [d.subject for d in got_one] == [f"{root}.a.x"]
    assert [d.subject for d in got_rest] == [f"{root}.a.x", f"{root}.a.x.y"]
    assert await bus.provider.fetch(stream, one, 10, 0.5) == []


async def test_headers_and_correlation_id(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream)
    await bus.provider.publish(
        OutboundMessage(f"{root}.a", b"{}", headers={"X-Trace": "abc"}, correlation_id="corr-1")
    )
    (d,) = await fetch_until(bus.provider, stream, durable, 1)
    assert d.headers["X-Trace"] == "abc"
    assert d.headers[CORRELATION_HEADER] == "corr-1"


async def test_msg_id_dedup(bus: Harness) -> None:
    _need(bus, Feature.DEDUP)
    stream, root = await bus.stream(duplicate_window=to_duration(60))
    durable = await bus.consumer(stream)
    first = await bus.provider.publish(OutboundMessage(f"{root}.a", b"1", msg_id="id-1"))
    second = await bus.provider.publish(OutboundMessage(f"{root}.a", b"2", msg_id="id-1"))
    third = await bus.provider.publish(OutboundMessage(f"{root}.a", b"3", msg_id="id-2"))
    assert (first.duplicate, second.duplicate, third.duplicate) == (False, True, False)
    assert second.sequence == first.sequence
    got = await fetch_until(bus.provider, stream, durable, 2)
    assert [d.payload for d in got] == [b"1", b"3"]
    assert await bus.provider.fetch(stream, durable, 10, 0.5) == []


async def test_order_within_a_subject(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream)
    msgs = [OutboundMessage(f"{root}.o", str(i).encode()) for i in range(40)]
    results = await bus.provider.publish_many(msgs)
    assert all(isinstance(r, PublishResult) for r in results)
    got = await fetch_until(bus.provider, stream, durable, 40, batch=7, ack=True)
    assert [int(d.payload) for d in got] == list(range(40))
    assert [d.sequence for d in got] == sorted(d.sequence for d in got)


async def test_publish_many_reports_per_message(bus: Harness) -> None:
    stream, root = await bus.stream()
    msgs = [
        OutboundMessage(f"{root}.a", b"1"),
        OutboundMessage("nowhere.captured.zz", b"2"),
        OutboundMessage(f"{root}.b", b"3"),
    ]
    first, bad, last = await bus.provider.publish_many(msgs)
    assert isinstance(first, PublishResult) and isinstance(last, PublishResult)
    assert first.sequence < last.sequence and first.stream == stream
    assert isinstance(bad, EventbusError)


async def test_deliver_policies(bus: Harness) -> None:
    stream, root = await bus.stream()
    early = [
        await bus.provider.publish(OutboundMessage(f"{root}.a", f"e{i}".encode())) for i in range(3)
    ]
    every = await bus.consumer(stream, deliver_policy=pb.DELIVER_POLICY_ALL)
    new = await bus.consumer(stream, deliver_policy=pb.DELIVER_POLICY_NEW)
    last = await bus.consumer(stream, deliver_policy=pb.DELIVER_POLICY_LAST)
    by_seq = await bus.consumer(
        stream, deliver_policy=pb.DELIVER_POLICY_BY_START_SEQUENCE, opt_start_seq=early[1].sequence
    )
    await bus.provider.publish(OutboundMessage(f"{root}.a", b"late"))
    got = {}
    for name, want in ((every, 4), (new, 1), (last, 2), (by_seq, 3)):
        got[name] = [d.payload for d in await fetch_until(bus.provider, stream, name, want)]
    assert got[every] == [b"e0", b"e1", b"e2", b"late"]
    assert got[new] == [b"late"]
    assert got[last] == [b"e2", b"late"]
    assert got[by_seq] == [b"e1", b"e2", b"late"]


async def test_competing_consumers_share_a_durable(bus: Harness) -> None:
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=30.0)
    other = await bus.another()
    total = 60
    await bus.provider.publish_many(
        [OutboundMessage(f"{root}.w", str(i).encode()) for i in range(total)]
    )
    seen: list[list[int]] = [[], []]

    async def worker(idx: int) -> None:
        provider = (bus.provider, other)[idx]
        deadline = time.monotonic() + 20
        while sum(map(len, seen)) < total and time.monotonic() < deadline:
            batch = await provider.fetch(stream, durable, 5, 0.5)
            seen[idx].extend(d.sequence for d in batch)
            await asyncio.sleep(0)  # let the other worker claim too
            if batch:
                await provider.settle([d.ack_token for d in batch], AckAction.ACK)

    await asyncio.gather(worker(0), worker(1))
    everything = seen[0] + seen[1]
    assert len(everything) == total, "a message was held twice or lost"
    assert len(set(everything)) == total


async def test_errors_are_typed(bus: Harness) -> None:
    stream, _ = await bus.stream()
    with pytest.raises(NotFoundError):
        await bus.provider.fetch(stream, "no_such_consumer", 1, 0.1)
    with pytest.raises(RequestError):
        await bus.provider.settle(["not-a-token"], AckAction.ACK)
    with pytest.raises(NotFoundError):
        await bus.provider.publish(OutboundMessage("nowhere.captured.zz", b""))


async def test_consumer_immutable_settings_conflict(bus: Harness) -> None:
    stream, _ = await bus.stream()
    durable = await bus.consumer(stream, deliver_policy=pb.DELIVER_POLICY_ALL)
    await bus.consumer(stream, name=durable, deliver_policy=pb.DELIVER_POLICY_ALL)  # idempotent
    with pytest.raises(ConflictError, match="deliver_policy"):
        await bus.consumer(stream, name=durable, deliver_policy=pb.DELIVER_POLICY_NEW)


@pytest.mark.needs("restart")
async def test_broker_restart_mid_run(restartable_bus: Harness) -> None:
    bus = restartable_bus
    _need(bus, Feature.RESTART)
    assert bus.restart is not None
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, ack_wait=2.0)
    for i in range(5):
        await bus.provider.publish(OutboundMessage(f"{root}.a", f"before{i}".encode()))
    await fetch_until(bus.provider, stream, durable, 2, batch=2, ack=True)
    await bus.restart()

    async def publish_works() -> bool:
        try:
            await bus.provider.publish(OutboundMessage(f"{root}.a", b"after"))
        except EventbusError:
            return False  # typed errors while the broker comes back; never a crash
        return True

    assert await eventually(publish_works, timeout=30.0)
    got = await fetch_until(bus.provider, stream, durable, 4, timeout=30.0, ack=True)
    payloads = sorted(d.payload for d in got)
    assert payloads == [b"after", b"before2", b"before3", b"before4"]


# ---- optional capabilities: dead letters and pending counts ----


def _dead_letter(
    stream: str, consumer: str, seq: int, subject: str, payload: bytes
) -> OutboundMessage:
    """The copy the subscribe loop publishes for an exhausted message (same headers)."""
    headers = {
        DLQ_SUBJECT: subject,
        DLQ_STREAM: stream,
        DLQ_CONSUMER: consumer,
        DLQ_SEQUENCE: str(seq),
        DLQ_DELIVERIES: "3",
        DLQ_ERROR: f"boom {seq}",
        DLQ_PUBLISHED_AT: "2026-01-02T03:04:05Z",
        "X-Trace": f"t{seq}",
    }
    return OutboundMessage(
        default_dead_letter_subject(stream, consumer),
        payload,
        headers,
        msg_id=dead_letter_msg_id(stream, consumer, seq),
    )


@pytest.mark.needs("dead_letters")
async def test_dead_letters_are_listed_and_removed(bus: Harness) -> None:
    await bus.provider.ensure_stream(
        pb.StreamConfig(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_PREFIX}.>"])
    )
    source, root = await bus.stream()  # a fresh name: other letters in the stream are not ours
    for seq, consumer in ((1, "w1"), (2, "w2"), (3, "w1")):
        await bus.provider.publish(
            _dead_letter(source, consumer, seq, f"{root}.orders", f"p{seq}".encode())
        )
    store = await require_dead_letters(bus.provider).dead_letters()
    try:
        letters = await store.list(stream=source)
        assert [(x.consumer, x.sequence, x.payload) for x in letters] == [
            ("w1", 1, b"p1"),
            ("w2", 2, b"p2"),
            ("w1", 3, b"p3"),
        ]
        first = letters[0]
        assert (first.dlq_stream, first.subject, first.stream) == (
            DEAD_LETTER_STREAM,
            f"{root}.orders",
            source,
        )
        assert (first.delivery_count, first.error) == (3, "boom 1")
        assert first.published_at == "2026-01-02T03:04:05Z"
        assert first.headers == {"X-Trace": "t1"}  # the original ones, no dedup id
        assert letters[0].dlq_sequence < letters[1].dlq_sequence < letters[2].dlq_sequence
        assert [x.sequence for x in await store.list(stream=source, consumer="w1")] == [1, 3]
        assert [x.sequence for x in await store.list(stream=source, limit=2)] == [1, 2]

        await store.remove(first)
        await store.remove(first)  # already gone: no error
        assert [x.sequence for x in await store.list(stream=source)] == [2, 3]
    finally:
        await store.close()
    # Another connection sees the broker's state, not the first store's.
    other = await require_dead_letters(await bus.another()).dead_letters()
    try:
        assert [x.sequence for x in await other.list(stream=source)] == [2, 3]
    finally:
        await other.close()


@pytest.mark.needs("dead_letters")
async def test_dead_letters_of_a_consumers_own_stream(bus: Harness) -> None:
    source, root = await bus.stream()
    own, own_root = await bus.stream()  # captures the consumer's dead_letter_subject
    letter = _dead_letter(source, "w", 7, f"{root}.a", b"x")
    letter.subject = f"{own_root}.dead"
    await bus.provider.publish(letter)
    store = await require_dead_letters(bus.provider).dead_letters(own)
    try:
        (found,) = await store.list()
        assert (found.dlq_stream, found.stream, found.consumer, found.sequence) == (
            own,
            source,
            "w",
            7,
        )
        assert await store.list(consumer="someone-else") == []
        await store.remove(found)
        assert await store.list() == []
    finally:
        await store.close()


@pytest.mark.needs("pending")
async def test_pending_counts_undelivered_and_unacknowledged(bus: Harness) -> None:
    provider = require_pending(bus.provider)
    stream, root = await bus.stream()
    durable = await bus.consumer(stream, filter_subject=f"{root}.a")

    async def counts_are(want: tuple[int, int]) -> bool:
        return await provider.pending(stream, durable) == want

    assert await provider.pending(stream, durable) == (0, 0)
    for i in range(4):
        await bus.provider.publish(OutboundMessage(f"{root}.a", f"m{i}".encode()))
    await bus.provider.publish(OutboundMessage(f"{root}.b", b"not for this consumer"))
    assert await eventually(lambda: counts_are((4, 0)))
    got: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        got += await bus.provider.fetch(stream, durable, 3 - len(got), 1.0)
    assert len(got) == 3
    assert await eventually(lambda: counts_are((1, 3)))
    await bus.provider.settle([got[0].ack_token], AckAction.ACK)
    assert await eventually(lambda: counts_are((1, 2)))
    await bus.provider.settle([got[1].ack_token], AckAction.TERM)
    assert await eventually(lambda: counts_are((1, 1)))
    with pytest.raises(NotFoundError):
        await provider.pending(stream, "no_such_consumer")
