"""Helpers of the provider conformance suite: the Harness and polling helpers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.providers import REGISTRY
from workflow_eventbus.providers.base import Delivery, Provider

# Every provider with a runtime, the test double included: a new provider joins the
# suite by being registered (and the fixtures then need a broker for it).
KINDS = [spec.name for spec in REGISTRY.values() if spec.runs]

# Per provider, the settings of the suite's broker beyond what the registry fills in.
_SETTINGS: dict[str, dict[str, Any]] = {"pgchannel": {"poll_interval": "250ms"}}


def factory(kind: str, url: str, schema: str) -> Callable[[], Provider]:
    spec = REGISTRY[kind]
    cluster = spec.fill_defaults(pb.ClusterConfig(dsn=url, **_SETTINGS.get(kind, {})))
    if kind == "pgchannel":
        cluster.schema = schema
    return lambda: spec.create(cluster, url, "conformance")


@dataclass
class Harness:
    kind: str
    provider: Provider
    make: Callable[[], Provider]
    restart: Callable[[], Awaitable[None]] | None = None
    extra: list[Provider] = field(default_factory=list)

    async def another(self) -> Provider:
        """A second, independently connected provider on the same broker."""
        other = self.make()
        await other.connect(10.0)
        self.extra.append(other)
        return other

    async def stream(self, **kw: Any) -> tuple[str, str]:
        """A fresh stream capturing ``<root>.>``; returns (stream name, subject root)."""
        token = uuid.uuid4().hex[:10]
        name, root = f"S_{token}", f"r{token}"
        cfg = pb.StreamConfig(name=name, subjects=[f"{root}.>"], **kw)
        await self.provider.ensure_stream(cfg)
        return name, root

    async def consumer(
        self, stream: str, *, ack_wait: float = 30.0, name: str = "", **kw: Any
    ) -> str:
        durable = name or f"c_{uuid.uuid4().hex[:10]}"
        kw.setdefault("deliver_policy", pb.DELIVER_POLICY_ALL)
        kw.setdefault("ack_policy", pb.ACK_POLICY_EXPLICIT)
        cfg = pb.ConsumerConfig(
            name=durable, stream_name=stream, ack_wait=to_duration(ack_wait), **kw
        )
        await self.provider.ensure_consumer(cfg)
        return durable

    async def close(self) -> None:
        for p in [*self.extra, self.provider]:
            await p.close()


async def fetch_until(
    provider: Provider,
    stream: str,
    consumer: str,
    want: int,
    *,
    timeout: float = 10.0,
    batch: int = 10,
    ack: bool = False,
) -> list[Delivery]:
    """Fetch repeatedly until ``want`` messages arrived or ``timeout`` passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        wait = max(min(2.0, deadline - time.monotonic()), 0.05)
        batch_got = await provider.fetch(stream, consumer, batch, wait)
        if ack and batch_got:
            from workflow_eventbus.providers.base import AckAction

            await provider.settle([d.ack_token for d in batch_got], AckAction.ACK)
        got.extend(batch_got)
    return got


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()
