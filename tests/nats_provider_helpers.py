"""Helpers shared by the NatsProvider tests (tests/integration/test_nats_*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import decode
from workflow_eventbus.providers.nats import NatsProvider

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}_{int(time.time() * 1000) % 100000}"


def stream_cfg(**fields: Any) -> pb.StreamConfig:
    return decode(pb.StreamConfig, fields, setting="test stream")


def consumer_cfg(**fields: Any) -> pb.ConsumerConfig:
    return decode(pb.ConsumerConfig, fields, setting="test consumer")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def connected(nats_url: str, name: str) -> AsyncIterator[NatsProvider]:
    prov = NatsProvider(pb.ClusterConfig(provider="nats"), nats_url, broker_name=name)
    await prov.connect(5)
    try:
        yield prov
    finally:
        await prov.close()


async def new_stream(provider: NatsProvider, **extra: Any) -> tuple[str, str]:
    name = unique("S")
    subject = name.lower()
    await provider.ensure_stream(stream_cfg(name=name, subjects=[f"{subject}.>"], **extra))
    return name, subject


async def new_consumer(provider: NatsProvider, stream: str, **extra: Any) -> str:
    name = unique("C")
    await provider.ensure_consumer(consumer_cfg(name=name, stream_name=stream, **extra))
    return name


async def acked_all(provider: NatsProvider, stream: str, consumer: str) -> bool:
    # settle() queues the acks on the connection; JetStream applies them a moment later.
    return await provider.pending(stream, consumer) == (0, 0)
