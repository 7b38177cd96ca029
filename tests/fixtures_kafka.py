"""Kafka fixtures: one shared broker per session (started only when a test asks for
it), and a factory of private brokers or clusters for tests that kill or restart them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio

from workflow_eventbus.devservers.kafka import KafkaServer

KafkaFactory = Callable[..., Awaitable[KafkaServer]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_server() -> AsyncIterator[KafkaServer]:
    """A one-node KRaft broker shared by the session; tests use unique topic names."""
    async with KafkaServer() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kafka_url(kafka_server: KafkaServer) -> str:
    return kafka_server.url


@pytest_asyncio.fixture(loop_scope="session")
async def private_kafka() -> AsyncIterator[KafkaFactory]:
    """``await private_kafka(nodes=3, min_insync=2, scram=..., tls=...)``: a started
    server of the test's own, stopped (processes and data) when the test ends."""
    servers: list[KafkaServer] = []

    async def make(**options: Any) -> KafkaServer:
        server = KafkaServer(**options)
        servers.append(server)  # before start: a half-started one is stopped too
        await server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()
