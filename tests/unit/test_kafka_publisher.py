"""The kafka publisher's dedup store loading, and the range reader it scans with."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import BrokerUnavailableError
from workflow_eventbus.providers.base import OutboundMessage, PublishResult
from workflow_eventbus.providers.kafka import scan
from workflow_eventbus.providers.kafka.publisher import Publisher

TP = TopicPartition("t", 0)


@dataclass
class _Record:
    offset: int


class _Reader:
    """A groupless consumer whose fetches return ``fetches`` one after another."""

    def __init__(self, fetches: list[list[int]]) -> None:
        self.fetches = fetches
        self.pos = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        del tps

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, tp: TopicPartition, timeout_ms: int) -> dict[TopicPartition, Any]:
        offsets = self.fetches.pop(0) if self.fetches else []
        if offsets:
            self.pos = offsets[-1] + 1
        return {tp: [_Record(o) for o in offsets]} if offsets else {}


async def _read(reader: _Reader, end: int, stall: float = 5.0) -> list[int]:
    return [r.offset async for r in scan.read_range(reader, TP, 0, end, stall=stall)]  # type: ignore[arg-type]


async def test_an_empty_fetch_does_not_end_the_range() -> None:
    reader = _Reader([[0, 1], [], [2, 3]])
    assert await _read(reader, 4) == [0, 1, 2, 3]


async def test_records_past_the_end_are_left_out() -> None:
    assert await _read(_Reader([[0, 1, 2, 3]]), 2) == [0, 1]


async def test_a_range_that_never_arrives_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "FETCH_SLICE_MS", 1)
    with pytest.raises(BrokerUnavailableError, match="no progress"):
        await _read(_Reader([[0]]), 5, stall=0.0)


@dataclass
class _Stream:
    cfg: pb.StreamConfig


def _publisher() -> Publisher:
    return Publisher(None, None, None, None, {}, timeout=1.0)  # type: ignore[arg-type]


async def test_a_failed_dedup_load_is_tried_again() -> None:
    publisher = _publisher()
    calls = 0

    async def load(record: Any, store: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokerUnavailableError("down")

    publisher._load = load  # type: ignore[method-assign]
    record: Any = _Stream(pb.StreamConfig(name="s"))
    with pytest.raises(BrokerUnavailableError):
        await publisher._store(record)
    await publisher._store(record)
    assert calls == 2


async def test_close_cancels_a_running_dedup_load() -> None:
    publisher = _publisher()
    started = asyncio.Event()

    async def load(record: Any, store: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    publisher._load = load  # type: ignore[method-assign]
    waiter = asyncio.create_task(publisher._store(_Stream(pb.StreamConfig(name="s"))))  # type: ignore[arg-type]
    await started.wait()
    task = publisher._loading["s"]
    await publisher.close()
    assert task.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def _batch_publisher(fail: str = "") -> tuple[Publisher, list[str]]:
    """A publisher whose sends are recorded (and ``fail``'s send raises a KafkaError)."""
    publisher = _publisher()
    sent: list[str] = []
    stream: Any = _Stream(pb.StreamConfig(name="s"))

    async def route(subject: str, setting: str = "subject") -> Any:
        return stream, None

    async def send(msg: OutboundMessage, record: Any, topic: Any) -> Any:
        if msg.subject == fail:
            raise KafkaTimeoutError("queue full")
        sent.append(msg.subject)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def publish_once(msg: OutboundMessage, record: Any, topic: Any) -> PublishResult:
        await send(msg, record, topic)
        return PublishResult("s", 1, datetime.now(UTC))

    publisher.route = route  # type: ignore[method-assign]
    publisher._send = send  # type: ignore[method-assign]
    publisher._publish_once = publish_once  # type: ignore[method-assign]
    publisher._result = lambda record, topic, meta: PublishResult("s", 1, datetime.now(UTC))  # type: ignore[method-assign]
    return publisher, sent


async def test_a_batch_reaches_the_broker_in_list_order() -> None:
    publisher, sent = _batch_publisher()
    msgs = [
        OutboundMessage(subject="a", payload=b""),
        OutboundMessage(subject="b", payload=b"", msg_id="id-b"),
        OutboundMessage(subject="c", payload=b""),
    ]
    results = await publisher.publish_many(msgs)
    assert sent == ["a", "b", "c"]
    assert all(isinstance(r, PublishResult) for r in results)


async def test_a_producer_error_fails_only_its_message() -> None:
    publisher, sent = _batch_publisher(fail="b")
    msgs = [OutboundMessage(subject=x, payload=b"") for x in "abc"]
    results = await publisher.publish_many(msgs)
    assert sent == ["a", "c"]
    assert isinstance(results[0], PublishResult) and isinstance(results[2], PublishResult)
    assert isinstance(results[1], BrokerUnavailableError)
    assert "messages[1]" in str(results[1])


async def test_a_scanner_whose_start_fails_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[bool] = []

    class _Failing:
        def __init__(self, **_: Any) -> None:
            pass

        async def start(self) -> None:
            raise BrokerUnavailableError("down")

        async def stop(self) -> None:
            stopped.append(True)

    monkeypatch.setattr(scan, "AIOKafkaConsumer", _Failing)
    with pytest.raises(BrokerUnavailableError):
        async with scan.scanner({}):
            pass
    assert stopped == [True]
