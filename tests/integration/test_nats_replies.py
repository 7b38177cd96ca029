"""ReplyMux (the provider's awaited publish) against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import nats.errors
import nats.js.errors as js_errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats_provider_helpers import unique

from workflow_eventbus.providers.nats.replies import ReplyMux


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def test_concurrent_publishes_each_get_their_own_ack(nc: NatsClient) -> None:
    name = unique("R")
    await nc.jetstream().add_stream(name=name, subjects=[f"{name}.>"])
    mux = ReplyMux(nc)
    await mux.open()
    try:
        acks = await asyncio.gather(
            *[mux.publish(f"{name}.x", str(i).encode(), None, 5) for i in range(200)]
        )
        again = await mux.publish(f"{name}.x", b"d", {"Nats-Msg-Id": "one"}, 5)
        dup = await mux.publish(f"{name}.x", b"d", {"Nats-Msg-Id": "one"}, 5)
    finally:
        await mux.close()
    assert sorted(a.seq for a in acks) == list(range(1, 201))
    assert {a.stream for a in acks} == {name}
    assert not again.duplicate and dup.duplicate and dup.seq == again.seq
    assert not mux._waiting


async def test_no_stream_and_no_answer_are_nats_errors_and_leave_nothing(nc: NatsClient) -> None:
    silent = unique("silent")
    await nc.subscribe(silent)  # a responder that never answers
    mux = ReplyMux(nc)
    await mux.open()
    try:
        with pytest.raises(js_errors.NoStreamResponseError):
            await mux.publish(unique("nostream"), b"x", None, 5)
        with pytest.raises(nats.errors.TimeoutError):
            await mux.publish(silent, b"x", None, 0.2)
        task = asyncio.create_task(mux.publish(silent, b"x", None, 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not mux._waiting  # timed out and cancelled requests are forgotten
        pending = asyncio.create_task(mux.publish(silent, b"x", None, 30))
        await asyncio.sleep(0.05)
    finally:
        await mux.close()
    with pytest.raises(nats.errors.ConnectionClosedError):  # at once, not after 30 s
        await asyncio.wait_for(pending, 2)
