"""NATS scenarios: the library (in process) and the raw nats-py calls they are measured against."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from .._proto import eventbus_pb2 as pb
from ..providers.base import OutboundMessage
from .core import PAYLOAD, Budget, Sample, clock, timed
from .env import PUB_STREAM, PUB_SUBJECT, RAW_FETCH, RAW_TRIGGER, RAW_TRIGGER_16, BenchEnv

BATCH = 100  # messages per publish batch and per consume batch
IN_FLIGHT = 16  # the concurrent raw baseline's workers, as trigger max_in_flight 16


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
        async with self._filled_pull(RAW_FETCH, limit) as sub:

            async def batch() -> int:
                msgs = await sub.fetch(BATCH, timeout=5)
                for msg in msgs:
                    await msg.ack()
                return len(msgs)

            return await timed(limit, seconds, batch)

    async def raw_fetch1_ack_echo(self, limit: int, seconds: float) -> Sample:
        """What a sequential trigger cannot avoid: fetch(1), one gRPC hop, ack()."""
        echo = self.env.echo.message
        async with self._filled_pull(RAW_TRIGGER, limit) as sub:

            async def one() -> int:
                msgs = await sub.fetch(1, timeout=5)
                for msg in msgs:
                    await echo(
                        pb.Message(subject=msg.subject, payload=msg.data, ack_token=msg.reply)
                    )
                    await msg.ack()
                return len(msgs)

            return await timed(limit, seconds, one)

    async def raw_fetch_ack_echo_16(self, limit: int, seconds: float) -> Sample:
        """The raw clients with 16 in flight: one fetcher (batches of 16) feeding 16
        workers that each make the gRPC hop and ack. No target: it shows what 16 in
        flight buys the raw clients on this machine, next to the plugin's row."""
        echo = self.env.echo.message
        queue: asyncio.Queue[Msg | None] = asyncio.Queue(IN_FLIGHT)
        finished: list[float] = []  # like the trigger rows: latency = gap between messages
        budget = Budget(limit, seconds)
        done = 0

        async def fetcher(sub: JetStreamContext.PullSubscription) -> None:
            fetched = 0
            while budget.more(fetched):
                msgs = await sub.fetch(IN_FLIGHT, timeout=5)
                for msg in msgs:
                    await queue.put(msg)
                fetched += len(msgs)
            for _ in range(IN_FLIGHT):
                await queue.put(None)

        async def worker() -> None:
            nonlocal done
            while (msg := await queue.get()) is not None:
                await echo(pb.Message(subject=msg.subject, payload=msg.data, ack_token=msg.reply))
                await msg.ack()
                finished.append(clock())
                done += 1

        async with self._filled_pull(RAW_TRIGGER_16, limit) as sub:
            await asyncio.gather(fetcher(sub), *[worker() for _ in range(IN_FLIGHT)])
            return budget.sample(done, [b - a for a, b in itertools.pairwise(finished)])

    @contextlib.asynccontextmanager
    async def _filled_pull(
        self, spec: tuple[str, str, str], limit: int
    ) -> AsyncIterator[JetStreamContext.PullSubscription]:
        """The stream of ``spec`` refilled with ``limit`` messages and a pull subscription
        bound to its durable; on a clean exit the acks are flushed to the server."""
        stream, subject, durable = spec
        await self.env.purge(stream)
        await self.env.fill(subject, limit)
        sub = await self.env.js.pull_subscribe_bind(durable, stream)
        try:
            yield sub
            await self.env.nc.flush()  # type: ignore[union-attr]
        finally:
            await sub.unsubscribe()


def _raise_first(results: Sequence[object]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result
