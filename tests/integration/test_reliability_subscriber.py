"""Issue 5 items 1-4 against real servers (nats-server and PostgreSQL/pgchannel).

Retry with backoff by delivery count, dead letters holding exactly the
exhausted messages (and the `dlq` CLI over them), in-progress signals under
long handlers, graceful stop, idempotent publish.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from reliability_helpers import json_lines, make_bus, run_cli, unique, until

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.dlq import open_store
from workflow_eventbus.engine.steps import create_step
from workflow_eventbus.engine.trigger import SubscribeTrigger


@pytest.fixture(params=["nats", "pgchannel"])
def target(request: pytest.FixtureRequest, nats_url: str, pg_dsn: str) -> dict[str, Any]:
    """Where to connect: the provider name, its URL and extra broker settings."""
    if request.param == "nats":
        return {"provider": "nats", "url": nats_url, "broker": {}}
    schema = unique("rel_").lower()
    return {
        "provider": "pgchannel",
        "url": pg_dsn,
        "broker": {"schema": schema, "poll_interval": "50ms"},
    }


async def bus_for(
    target: dict[str, Any], consumer: dict[str, Any] | None, **kw: Any
) -> tuple[EventBus, str]:
    stream = unique("REL")
    bus = await make_bus(
        target["provider"],
        target["url"],
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        consumer=consumer,
        broker=target["broker"],
        **kw,
    )
    return bus, stream


async def publish_json(bus: EventBus, subject: str, items: list[dict[str, Any]]) -> list[Any]:
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": subject})
    return [
        await step.execute(pb.PublishRequest(payload=json.dumps(item).encode())) for item in items
    ]


async def test_backoff_schedule_and_dead_letters_hold_exactly_the_exhausted(target):
    consumer = {
        "name": "worker",
        "max_deliver": 3,
        "backoff": ["300ms", "600ms"],
        "ack_wait": "5s",
    }
    bus, stream = await bus_for(target, consumer)
    poison = {2, 5, 7}
    attempts: dict[int, list[tuple[float, int]]] = {}
    done: set[int] = set()

    async def handler(data: dict[str, Any]) -> None:
        i = data["body"]["i"]
        attempts.setdefault(i, []).append((time.monotonic(), data["delivery_count"]))
        if i in poison:
            raise RuntimeError(f"poison {i}")
        done.add(i)

    trig = SubscribeTrigger.from_trigger_config(
        bus, "pipeline:rel", {"consumer": "worker", "max_in_flight": 4}, handler
    )
    try:
        await publish_json(bus, f"{stream.lower()}.orders", [{"i": i} for i in range(10)])
        await trig.start()
        sub = trig.subscription
        assert sub is not None
        await until(lambda: sub.stats.dead_lettered == 3 and len(done) == 7, what="dead letters")
        for i in poison:
            counts = [c for _, c in attempts[i]]
            assert counts == [1, 2, 3], (i, counts)
            gaps = [b - a for (a, _), (b, _) in itertools.pairwise(attempts[i])]
            assert gaps[0] >= 0.3 and gaps[1] >= 0.6, gaps  # the backoff, by delivery count
            assert gaps[0] < 3.0 and gaps[1] < 3.0, gaps  # not the 5 s ack wait
        assert all(len(attempts[i]) == 1 for i in done)
        await until(
            lambda: _no_pending(bus, stream), what="source consumer settled (nothing left behind)"
        )

        store = await open_store(bus.provider("bus"))
        try:
            letters = await store.list(stream=stream)
        finally:
            await store.close()
        assert sorted(json.loads(x.payload)["i"] for x in letters) == sorted(poison)
        for letter in letters:
            assert letter.subject == f"{stream.lower()}.orders"
            assert letter.consumer == "worker" and letter.delivery_count == 3
            assert letter.error == f"poison {json.loads(letter.payload)['i']}"
            assert letter.sequence > 0
    finally:
        await trig.stop()

    # The CLI sees the same three, then replays them to the original subject.
    conn = ["--url", target["url"], "--provider", target["provider"]]
    if target["provider"] == "pgchannel":
        conn += ["--schema", target["broker"]["schema"]]
    code, out, err = await run_cli("dlq", "list", *conn, "--stream", stream, "--json")
    assert code == 0, err
    listed = json_lines(out)
    assert len(listed) == 3 and {row["delivery_count"] for row in listed} == {3}
    assert {row["error"] for row in listed} == {f"poison {i}" for i in poison}
    assert all(row["subject"] == f"{stream.lower()}.orders" for row in listed)

    poison.clear()  # the bug is fixed: replayed messages now succeed
    trig2 = SubscribeTrigger.from_trigger_config(
        bus, "pipeline:rel", {"consumer": "worker"}, handler
    )
    await trig2.start()
    try:
        code, out, err = await run_cli("dlq", "replay", *conn, "--stream", stream, "--json")
        assert code == 0, err
        assert len(json_lines(out)) == 3
        await until(lambda: len(done) == 10, what="replayed messages processed")
        code, out, err = await run_cli("dlq", "list", *conn, "--stream", stream, "--json")
        assert code == 0 and json_lines(out) == []
    finally:
        await trig2.stop()
        await bus.close()


async def _no_pending(bus: EventBus, stream: str) -> bool:
    return await bus.provider("bus").pending(stream, "worker") == (0, 0)


async def test_long_handler_is_not_redelivered_under_it(target):
    # JetStream applies a consumer backoff as the ack wait of each delivery:
    # delivery 1 has 1 s here, yet the handler runs 2.5 s.
    consumer = {"name": "slow", "ack_wait": "1s", "backoff": ["1s", "2s"], "max_deliver": 5}
    bus, stream = await bus_for(target, consumer)
    seen: list[int] = []

    async def handler(data: dict[str, Any]) -> None:
        seen.append(data["delivery_count"])
        await asyncio.sleep(2.5)  # the work itself, not a readiness wait

    trig = SubscribeTrigger.from_trigger_config(bus, "p", {"consumer": "slow"}, handler)
    try:
        await publish_json(bus, f"{stream.lower()}.x", [{"i": 0}])
        await trig.start()
        sub = trig.subscription
        assert sub is not None
        await until(lambda: sub.stats.acked == 1, what="long handler acked")
        assert seen == [1]
        assert sub.stats.in_progress_sent >= 3
        assert await bus.provider("bus").pending(stream, "slow") == (0, 0)
    finally:
        await trig.stop()
        await bus.close()


async def test_stop_finishes_in_flight_naks_the_rest_and_acks_only_successes(target):
    consumer = {"name": "w", "ack_wait": "30s"}
    bus, stream = await bus_for(target, consumer)
    started: set[int] = set()
    finished: set[int] = set()

    async def handler(data: dict[str, Any]) -> None:
        i = data["body"]["i"]
        started.add(i)
        if i % 2:
            await asyncio.sleep(60)  # cannot finish within the drain timeout
        else:
            await asyncio.sleep(0.3)
        finished.add(i)

    cfg = {"consumer": "w", "max_in_flight": 4, "drain_timeout": "1s"}
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    try:
        await publish_json(bus, f"{stream.lower()}.x", [{"i": i} for i in range(4)])
        await trig.start()
        await until(lambda: len(started) == 4, what="4 in flight")
        t0 = time.monotonic()
        await trig.stop()
        assert time.monotonic() - t0 < 5
        sub = trig.subscription
        assert sub is not None and not sub.running
        assert finished == {0, 2} and sub.stats.acked == 2
        # The two unfinished ones were nak'd: deliverable now, long before the 30 s ack wait.
        provider = bus.provider("bus")
        again = await _fetch_all(provider, stream, "w", 2)
        assert sorted(json.loads(d.payload)["i"] for d in again) == [1, 3]
        assert all(d.delivery_count == 2 for d in again)
        await provider.settle([d.ack_token for d in again], pb.ACK_ACTION_ACK)  # type: ignore[arg-type]
    finally:
        await bus.close()


async def test_stop_naks_fetched_but_unstarted_messages(target):
    bus, stream = await bus_for(target, {"name": "b", "ack_wait": "30s"})
    gate = asyncio.Event()
    seen: list[int] = []

    async def handler(data: dict[str, Any]) -> None:
        seen.append(data["body"]["i"])
        await gate.wait()

    cfg = {"consumer": "b", "fetch_batch": 5, "drain_timeout": "5s"}
    trig = SubscribeTrigger.from_trigger_config(bus, "p", cfg, handler)
    try:
        await publish_json(bus, f"{stream.lower()}.x", [{"i": i} for i in range(5)])
        await trig.start()
        sub = trig.subscription
        assert sub is not None
        await until(lambda: sub.stats.fetched == 5 and seen == [0], what="batch of 5 fetched")
        stopping = asyncio.create_task(trig.stop())
        await until(lambda: sub._stopping.is_set(), what="stop requested")
        gate.set()  # the running one finishes within the grace period and is acked
        await stopping
        assert seen == [0] and sub.stats.acked == 1
        again = await _fetch_all(bus.provider("bus"), stream, "b", 4)
        assert sorted(json.loads(d.payload)["i"] for d in again) == [1, 2, 3, 4]
    finally:
        await bus.close()


async def _fetch_all(provider: Any, stream: str, consumer: str, n: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        got += await provider.fetch(stream, consumer, n - len(got), 0.5)
    return got


async def test_msg_id_is_deduplicated_within_the_window(target):
    bus, stream = await bus_for(target, None, stream_extra={"duplicate_window": "2s"})
    subject = f"{stream.lower()}.x"
    step = create_step(bus, "step.eventbus.publish", "pub", {"subject": subject})
    try:
        t0 = time.monotonic()
        first = await step.execute(pb.PublishRequest(payload=b"a", msg_id="order-1"))
        again = await step.execute(pb.PublishRequest(payload=b"b", msg_id="order-1"))
        other = await step.execute(pb.PublishRequest(payload=b"c", msg_id="order-2"))
        assert not first.duplicate and again.duplicate and not other.duplicate
        assert again.sequence == first.sequence and other.sequence != first.sequence
        # Batch publish deduplicates too.
        batch = await step.execute(
            pb.PublishRequest(
                messages=[
                    pb.PublishRequest(payload=b"d", msg_id="order-2"),
                    pb.PublishRequest(payload=b"e", msg_id="order-3"),
                ]
            )
        )
        assert [r.duplicate for r in batch.results] == [True, False]
        # Only three messages were stored.
        await bus.provider("bus").ensure_consumer(pb.ConsumerConfig(name="all", stream_name=stream))
        stored = await _fetch_all(bus.provider("bus"), stream, "all", 3)
        stored += await bus.provider("bus").fetch(stream, "all", 5, 0.2)
        assert sorted(d.payload for d in stored) == [b"a", b"c", b"e"]
        # After the window the same id is a new message.
        later: list[Any] = []

        async def accepted_again() -> bool:
            later.append(await step.execute(pb.PublishRequest(payload=b"f", msg_id="order-1")))
            return not later[-1].duplicate

        await until(accepted_again, timeout=15, what="duplicate window expiry")
        assert later[0].duplicate  # still inside the window when the polling began
        assert time.monotonic() - t0 >= 1.5
    finally:
        await bus.close()
