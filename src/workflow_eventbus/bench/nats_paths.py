"""NATS scenarios: the library (in process) and the raw nats-py calls they are measured against."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .._proto import eventbus_pb2 as pb
from ..providers.base import OutboundMessage
from .core import PAYLOAD, Sample, timed
from .env import PUB_STREAM, PUB_SUBJECT, RAW_FETCH, RAW_TRIGGER, BenchEnv

BATCH = 100  # messages per publish batch and per consume batch


class NatsPaths:
    def __init__(self, env: BenchEnv) -> None:
        self.env = env

    # -- publish, one at a time ----------------------------------------------------
    async def raw_publish(self, limit: int, seconds: float) -> Sample:
        await self.env.purge(PUB_STREAM)
        js = self.env.js

        async def one() -> int:
            await js.publish(PUB_SUBJECT, PAYLOAD)
            return 1

        return await timed(limit, seconds, one)

    async def lib_publish(self, limit: int, seconds: float) -> Sample:
        await self.env.purge(PUB_STREAM)
        provider = self.env.bus.provider()

        async def one() -> int:
            await provider.publish(OutboundMessage(PUB_SUBJECT, PAYLOAD))
            return 1

        return await timed(limit, seconds, one)

    # -- publish, pipelined batches ------------------------------------------------
    async def raw_publish_async(self, limit: int, seconds: float) -> Sample:
        await self.env.purge(PUB_STREAM)
        js = self.env.js

        async def batch() -> int:
            futures = [await js.publish_async(PUB_SUBJECT, PAYLOAD) for _ in range(BATCH)]
            await asyncio.gather(*futures)
            return BATCH

        return await timed(limit, seconds, batch)

    async def lib_publish_many(self, limit: int, seconds: float) -> Sample:
        await self.env.purge(PUB_STREAM)
        provider = self.env.bus.provider()

        async def batch() -> int:
            msgs = [OutboundMessage(PUB_SUBJECT, PAYLOAD) for _ in range(BATCH)]
            _raise_first(await provider.publish_many(msgs))
            return BATCH

        return await timed(limit, seconds, batch)

    # -- raw baselines of the plugin paths -----------------------------------------
    async def raw_publish_echo(self, limit: int, seconds: float) -> Sample:
        """One JetStream publish plus one gRPC hop carrying the same request."""
        await self.env.purge(PUB_STREAM)
        js, echo = self.env.js, self.env.echo.publish
        request = pb.PublishRequest(payload=PAYLOAD)

        async def one() -> int:
            await echo(request)
            await js.publish(PUB_SUBJECT, PAYLOAD)
            return 1

        return await timed(limit, seconds, one)

    async def raw_fetch_ack(self, limit: int, seconds: float) -> Sample:
        """``fetch(100)`` then ``ack()`` of each message (fire and forget, as nats-py does)."""
        stream, subject, durable = RAW_FETCH
        await self.env.purge(stream)
        await self.env.fill(subject, limit)
        sub = await self.env.js.pull_subscribe_bind(durable, stream)

        async def batch() -> int:
            msgs = await sub.fetch(BATCH, timeout=5)
            for msg in msgs:
                await msg.ack()
            return len(msgs)

        try:
            sample = await timed(limit, seconds, batch)
            await self.env.nc.flush()  # type: ignore[union-attr]
        finally:
            await sub.unsubscribe()
        return sample

    async def raw_fetch1_ack_echo(self, limit: int, seconds: float) -> Sample:
        """What a sequential trigger cannot avoid: fetch(1), one gRPC hop, ack()."""
        stream, subject, durable = RAW_TRIGGER
        await self.env.purge(stream)
        await self.env.fill(subject, limit)
        sub = await self.env.js.pull_subscribe_bind(durable, stream)
        echo = self.env.echo.message

        async def one() -> int:
            msgs = await sub.fetch(1, timeout=5)
            for msg in msgs:
                await echo(pb.Message(subject=msg.subject, payload=msg.data, ack_token=msg.reply))
                await msg.ack()
            return len(msgs)

        try:
            sample = await timed(limit, seconds, one)
            await self.env.nc.flush()  # type: ignore[union-attr]
        finally:
            await sub.unsubscribe()
        return sample


def _raise_first(results: Sequence[object]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result
