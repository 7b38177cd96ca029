"""Optional provider capabilities: declared as a Feature exactly when implemented,
asked for through providers.capabilities, used by engine/dlq.py without names."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.deadletter import (
    DEAD_LETTER_PREFIX,
    DEAD_LETTER_STREAM,
    DLQ_CONSUMER,
    DLQ_STREAM,
    DLQ_SUBJECT,
)
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.engine.dlq import open_store, replay
from workflow_eventbus.providers import REGISTRY
from workflow_eventbus.providers.base import (
    CAPABILITIES,
    AckAction,
    Delivery,
    Feature,
    HasDeadLetters,
    HasPending,
    OutboundMessage,
    Provider,
    PublishResult,
)
from workflow_eventbus.providers.capabilities import (
    providers_with,
    require_dead_letters,
    require_pending,
)
from workflow_eventbus.providers.memory import MemoryProvider

RUNTIMES = [spec.name for spec in REGISTRY.values() if spec.runs]


@pytest.mark.parametrize("name", RUNTIMES)
def test_a_feature_is_declared_exactly_when_the_capability_is_implemented(name: str) -> None:
    cls = REGISTRY[name].load()
    for kind in CAPABILITIES:
        assert (kind.feature in cls.features) == issubclass(cls, kind), (name, kind.__name__)


def test_each_capability_has_its_own_feature() -> None:
    features = [kind.feature for kind in CAPABILITIES]
    assert len(set(features)) == len(features)
    assert {Feature.DEAD_LETTERS, Feature.PENDING} <= set(features)


def test_pending_is_no_longer_on_every_provider() -> None:
    assert not hasattr(Provider, "pending")
    assert hasattr(HasPending, "pending")


class _Bare(Provider):
    """A provider with the required methods only."""

    name = "bare"

    async def connect(self, timeout: float) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def connected(self) -> bool:
        return True

    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        return None

    async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None:
        return None

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        raise NotImplementedError

    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        return []

    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        return None


async def test_a_missing_capability_names_provider_capability_and_who_has_it() -> None:
    bare = _Bare(pb.ClusterConfig(), "", broker_name="orders")
    assert providers_with(HasDeadLetters) == ["nats", "pgchannel", "kafka"]  # not the double
    for require, feature in (
        (require_dead_letters, "dead_letters"),
        (require_pending, "pending"),
    ):
        with pytest.raises(ConfigError) as info:
            require(bare)
        text = str(info.value)
        assert 'eventbus.broker "orders": provider' in text
        assert "'bare'" in text and feature in text
        assert "nats or pgchannel" in text  # the providers users may pick that have it
        assert "memory" not in text  # the test double is not offered
    with pytest.raises(ConfigError, match="dead_letters"):
        await open_store(bare)


async def test_open_store_and_replay_on_the_memory_double() -> None:
    url = f"memory://{uuid.uuid4().hex}"
    provider = MemoryProvider(pb.ClusterConfig(), url, broker_name="m")
    await provider.connect(1.0)
    await provider.ensure_stream(pb.StreamConfig(name="ORDERS", subjects=["orders.>"]))
    await provider.ensure_stream(
        pb.StreamConfig(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_PREFIX}.>"])
    )
    await provider.ensure_consumer(pb.ConsumerConfig(name="w", stream_name="ORDERS"))
    headers = {DLQ_SUBJECT: "orders.new", DLQ_STREAM: "ORDERS", DLQ_CONSUMER: "w", "X-A": "1"}
    await provider.publish(OutboundMessage(f"{DEAD_LETTER_PREFIX}.ORDERS.w", b"p", headers))
    await provider.publish(OutboundMessage(f"{DEAD_LETTER_PREFIX}.ORDERS.w", b"q", {}))
    store = await open_store(provider)
    try:
        letters = await store.list(stream="ORDERS")
        assert [x.payload for x in letters] == [b"p"]
        (result,) = await replay(provider, store, letters)
        assert result.error == "" and result.published is not None
        assert result.published.stream == "ORDERS"
        assert await store.list(stream="ORDERS") == []
        (unnamed,) = await store.list()  # no original subject: reported, kept
        (kept,) = await replay(provider, store, [unnamed])
        assert "no original subject" in kept.error
        assert len(await store.list()) == 1
    finally:
        await store.close()
    (again,) = await provider.fetch("ORDERS", "w", 5, 0.1)
    assert (again.subject, again.payload, again.headers) == ("orders.new", b"p", {"X-A": "1"})
    assert await require_pending(provider).pending("ORDERS", "w") == (0, 1)
    await provider.close()
