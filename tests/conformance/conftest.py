"""The provider conformance fixtures: one suite, every runtime provider.

``bus`` yields a :class:`harness.Harness` around a connected provider of the
kind the test is parametrised with; ``restartable_bus`` does the same on a
private broker whose ``restart`` the test may call.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from harness import KINDS, Harness, factory


def _features(kind: str) -> frozenset[str]:
    from workflow_eventbus.providers import REGISTRY

    return frozenset(f.value for f in REGISTRY[kind].features)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``needs(feature)`` is not collected for a provider that declares
    it lacks that feature (the in-memory double has no broker to restart)."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("needs")
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("kind") if callspec else None
        if marker and kind and marker.args[0] not in _features(kind):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


async def _harness(kind: str, url: str, schema: str, restart: Any = None) -> Harness:
    make = factory(kind, url, schema)
    provider = make()
    await provider.connect(10.0)
    return Harness(kind, provider, make, restart)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(kind: str, request: pytest.FixtureRequest) -> str:
    """The shared broker of ``kind`` (fixtures of other kinds are never started)."""
    if kind == "nats":
        return str(request.getfixturevalue("nats_url"))
    if kind == "pgchannel":
        return str(request.getfixturevalue("pg_dsn"))
    if kind == "kafka":
        return str(request.getfixturevalue("kafka_url"))
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def private_broker(
    kind: str, request: pytest.FixtureRequest
) -> tuple[str, Callable[[], Awaitable[None]] | None]:
    """A broker of ``kind`` of this test alone, and how to restart it."""
    if kind == "nats":
        server = request.getfixturevalue("nats_server_fresh")
        return server.url, server.restart
    if kind == "pgchannel":
        server = request.getfixturevalue("pg_server_fresh")
        return server.dsn, server.restart
    if kind == "kafka":
        kafka = request.getfixturevalue("kafka_server_fresh")
        return kafka.url, kafka.restart
    return f"memory://{uuid.uuid4().hex}", None


@pytest_asyncio.fixture(loop_scope="session")
async def kafka_server_fresh() -> AsyncIterator[Any]:
    """A one-node Kafka of this test alone (restart keeps its ports and data)."""
    from workflow_eventbus.devservers.kafka import KafkaServer

    async with KafkaServer() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def bus(kind: str, broker_url: str) -> AsyncIterator[Harness]:
    schema = f"conf_{uuid.uuid4().hex[:10]}"
    url = broker_url
    harness = await _harness(kind, url, schema)
    yield harness
    await harness.close()
    if kind == "pgchannel":
        await _drop_schema(url, schema)


@pytest_asyncio.fixture(loop_scope="session")
async def restartable_bus(
    kind: str, private_broker: tuple[str, Callable[[], Awaitable[None]] | None]
) -> AsyncIterator[Harness]:
    """Like ``bus``, on a private broker with ``restart`` set (None when unsupported)."""
    schema = f"conf_{uuid.uuid4().hex[:10]}"
    url, restart = private_broker
    harness = await _harness(kind, url, schema, restart)
    yield harness
    await harness.close()


async def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
