"""nats-server fixtures: one shared server per session, a fresh one for crash tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from workflow_eventbus.embedded import EmbeddedNats


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server() -> AsyncIterator[EmbeddedNats]:
    """A JetStream server shared by the session; tests use unique stream names."""
    async with EmbeddedNats() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest_asyncio.fixture(loop_scope="session")
async def nats_server_fresh() -> AsyncIterator[EmbeddedNats]:
    """A private server for tests that kill, restart or reconfigure it."""
    async with EmbeddedNats() as server:
        yield server
