"""The kafka publisher's msg_id store: a window, a bound, in-flight ids."""

from __future__ import annotations

import asyncio
import time

import pytest

from workflow_eventbus.providers.kafka.dedup import DedupStore


def test_an_id_is_seen_within_its_window_only() -> None:
    store = DedupStore(window=10.0, capacity=100)
    now = time.monotonic()
    store.remember("a", 5, now)
    entry = store.seen("a", now + 9.0)
    assert entry is not None and entry.sequence == 5
    assert store.seen("a", now + 10.5) is None
    assert store.seen("b", now) is None


def test_ids_published_before_the_window_are_not_remembered() -> None:
    store = DedupStore(window=10.0, capacity=100)
    store.remember("old", 1, time.monotonic() - 11.0)
    assert store.seen("old") is None and len(store) == 0


def test_the_oldest_ids_go_beyond_the_capacity() -> None:
    store = DedupStore(window=60.0, capacity=3)
    now = time.monotonic()
    for i in range(5):
        store.remember(f"id{i}", i + 1, now)
    assert len(store) == 3
    assert store.seen("id0") is None and store.seen("id1") is None
    assert [store.seen(f"id{i}").sequence for i in (2, 3, 4)] == [3, 4, 5]  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_an_id_in_flight_answers_with_the_first_outcome() -> None:
    store = DedupStore(window=60.0, capacity=10)
    store.begin("x")
    entry = store.seen("x")
    assert entry is not None and entry.done is not None
    waiter = asyncio.ensure_future(asyncio.shield(entry.done))
    store.end("x", 42)
    assert await waiter == 42
    again = store.seen("x")
    assert again is not None and again.sequence == 42 and again.done is None


@pytest.mark.asyncio
async def test_a_failed_publish_forgets_the_id() -> None:
    store = DedupStore(window=60.0, capacity=10)
    done = store.begin("x")
    store.abort("x", RuntimeError("broker down"))
    assert store.seen("x") is None
    with pytest.raises(RuntimeError):
        await done
