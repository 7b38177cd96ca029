"""nats-server fixtures: one shared server per session, a fresh one for crash tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest_asyncio
from nats_provider_helpers import connected

from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.providers.nats import NatsProvider


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


@pytest_asyncio.fixture(loop_scope="session")
async def provider(nats_url: str) -> AsyncIterator[NatsProvider]:
    """A NatsProvider connected to the shared server."""
    async with connected(nats_url, "bus") as prov:
        yield prov


@pytest_asyncio.fixture(loop_scope="session")
async def raw(nats_url: str) -> AsyncIterator[Any]:
    """A plain nats-py JetStream manager to inspect what the provider created."""
    nc = await nats.connect(nats_url)
    yield nc.jsm()
    await nc.close()
