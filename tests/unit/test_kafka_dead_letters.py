"""The kafka dead-letter store goes through the provider's bounded, mapped broker calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from workflow_eventbus.core.errors import BrokerUnavailableError
from workflow_eventbus.providers.kafka.dead_letters import KafkaDeadLetters


class _StuckRegistry:
    """A registry whose sync never ends (the broker is down)."""

    async def sync(self) -> None:
        await asyncio.Event().wait()


async def test_listing_with_the_broker_down_ends_in_broker_unavailable() -> None:
    calls: list[str] = []

    async def call(what: str, op: Awaitable[Any]) -> Any:  # as the provider's _call
        calls.append(what)
        try:
            return await asyncio.wait_for(op, 0.05)
        except TimeoutError as exc:
            raise BrokerUnavailableError(f"kafka {what}: timed out") from exc

    letters = KafkaDeadLetters(_StuckRegistry(), None, {}, call=call, timeout=0.05)  # type: ignore[arg-type]
    with pytest.raises(BrokerUnavailableError):
        await letters.list()
    assert calls == ["sync"]
