"""NatsProvider.settle against a real nats-server: ack, nak, in-progress, term, the outbox."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from nats_provider_helpers import acked_all, connected, eventually, new_consumer, new_stream

from workflow_eventbus.core.errors import NotFoundError, RequestError
from workflow_eventbus.providers.base import AckAction, OutboundMessage
from workflow_eventbus.providers.nats import NatsProvider


# -- settle --------------------------------------------------------------------
async def test_ack_many_tokens_in_one_call(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish_many([OutboundMessage(f"{subject}.n", b"m") for _ in range(20)])
    got = await provider.fetch(stream, consumer, 20, 2)
    assert await provider.pending(stream, consumer) == (0, 20)
    await provider.settle([m.ack_token for m in got], AckAction.ACK)
    await eventually(lambda: acked_all(provider, stream, consumer))


async def test_ack_from_another_connection(provider: NatsProvider, nats_url: str) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    async with connected(nats_url, "other") as other:
        await other.settle([msg.ack_token], AckAction.ACK)
    await eventually(lambda: acked_all(provider, stream, consumer))


async def test_acks_settled_one_by_one_share_socket_writes(
    provider: NatsProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handlers finishing in turn (one loop iteration each) do not pay a write each."""
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish_many([OutboundMessage(f"{subject}.n", b"m") for _ in range(10)])
    got = await provider.fetch(stream, consumer, 10, 2)
    assert len(got) == 10
    transport = provider._nc._transport  # type: ignore[union-attr]
    writes = 0
    real = transport.writelines

    def counting(data: Any) -> None:
        nonlocal writes
        writes += 1
        real(data)

    monkeypatch.setattr(transport, "writelines", counting)
    for msg in got:
        await provider.settle([msg.ack_token], AckAction.ACK)
        await asyncio.sleep(0)  # the next handler finishes in a later iteration
    await provider.confirm()
    assert writes <= 3, f"{writes} socket writes for 10 acks and one confirm"
    await eventually(lambda: acked_all(provider, stream, consumer))


async def test_close_right_after_settle_writes_the_acks(
    provider: NatsProvider, nats_url: str
) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    async with connected(nats_url, "other") as other:
        [msg] = await other.fetch(stream, consumer, 1, 2)
        await other.settle([msg.ack_token], AckAction.ACK)
    # closed well within the outbox's linger
    await eventually(lambda: acked_all(provider, stream, consumer))
    assert await provider.fetch(stream, consumer, 1, 0.3) == []


async def test_nak_redelivers_with_higher_count(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    await provider.settle([msg.ack_token], AckAction.NAK)
    [again] = await provider.fetch(stream, consumer, 1, 2)
    assert again.sequence == msg.sequence and again.delivery_count == 2


async def test_nak_with_delay_holds_the_message(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream)
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    await provider.settle([msg.ack_token], AckAction.NAK, delay=1.0)
    start = time.monotonic()
    assert await provider.fetch(stream, consumer, 1, 0.5) == []
    [again] = await provider.fetch(stream, consumer, 1, 3)
    assert time.monotonic() - start >= 0.8
    assert again.delivery_count == 2


async def test_ack_wait_expiry_redelivers(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream, ack_wait="1s")
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    [again] = await provider.fetch(stream, consumer, 1, 4)
    assert again.sequence == msg.sequence and again.delivery_count == 2


async def test_term_stops_redelivery(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream, ack_wait="1s")
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    await provider.settle([msg.ack_token], AckAction.TERM)
    assert await provider.fetch(stream, consumer, 1, 1.6) == []
    await eventually(lambda: acked_all(provider, stream, consumer))


async def test_in_progress_extends_ack_wait(provider: NatsProvider) -> None:
    stream, subject = await new_stream(provider)
    consumer = await new_consumer(provider, stream, ack_wait="1s")
    await provider.publish(OutboundMessage(f"{subject}.n", b"m"))
    [msg] = await provider.fetch(stream, consumer, 1, 2)
    for _ in range(3):  # 1.8 s in total, past the 1 s ack wait
        assert await provider.fetch(stream, consumer, 1, 0.6) == []
        await provider.settle([msg.ack_token], AckAction.IN_PROGRESS)
    await provider.settle([msg.ack_token], AckAction.ACK)
    await eventually(lambda: acked_all(provider, stream, consumer))


async def test_settle_rejects_foreign_token(provider: NatsProvider) -> None:
    with pytest.raises(RequestError) as err:
        await provider.settle(["orders:c:12"], AckAction.ACK)
    assert "ack_token" in str(err.value) and "orders:c:12" in str(err.value)


async def test_pending_unknown_consumer(provider: NatsProvider) -> None:
    stream, _ = await new_stream(provider)
    with pytest.raises(NotFoundError):
        await provider.pending(stream, "ghost")
