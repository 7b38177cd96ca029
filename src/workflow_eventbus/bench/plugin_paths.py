"""Plugin scenarios: the real plugin process driven through the engine harness."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from google.protobuf import duration_pb2

from .._proto import eventbus_pb2 as pb
from ..core.errors import ProviderError
from ..core.names import SUBSCRIBE
from .core import PAYLOAD, Sample, timed
from .env import PUB_STREAM, PUB_SUBJECT, STEP_FETCH, TRIGGER_1, TRIGGER_16, BenchEnv
from .nats_paths import BATCH


class PluginPaths:
    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self._steps: dict[str, str] = {}
        self._triggers: dict[int, str] = {}

    async def _step(self, kind: str, name: str, config: dict[str, object]) -> str:
        if name not in self._steps:
            host = await self.env.plugin()
            self._steps[name] = await host.create_step(kind, name, config)
        return self._steps[name]

    async def step_publish(self, limit: int, seconds: float) -> Sample:
        """ExecuteStep(step.eventbus.publish), one message per call, awaited in turn."""
        host = await self.env.plugin()
        handle = await self._step("step.eventbus.publish", "bench-pub", {"subject": PUB_SUBJECT})
        await self.env.purge(PUB_STREAM)
        request = pb.PublishRequest(payload=PAYLOAD)

        async def one() -> int:
            answer = await host.execute_step(handle, request)
            if answer.error:
                raise ProviderError(f"bench: publish step failed: {answer.error}")
            return 1

        return await timed(limit, seconds, one)

    async def step_consume_ack(self, limit: int, seconds: float) -> Sample:
        """ExecuteStep(consume, batch 100) then ExecuteStep(ack, the 100 tokens)."""
        stream, subject, durable = STEP_FETCH
        host = await self.env.plugin()
        take = await self._step(
            "step.eventbus.consume", "bench-take", {"consumer": durable, "batch_size": BATCH}
        )
        ack = await self._step("step.eventbus.ack", "bench-ack", {})
        await self.env.purge(stream)
        await self.env.fill(subject, limit)
        wait = pb.ConsumeRequest(max_wait=duration_pb2.Duration(seconds=5))

        async def batch() -> int:
            got = await host.run_step(take, wait, pb.ConsumeResponse)
            tokens = [m.ack_token for m in got.messages]
            if tokens:
                await host.run_step(ack, pb.AckRequest(ack_tokens=tokens), pb.AckResponse)
            return len(tokens)

        return await timed(limit, seconds, batch)

    async def trigger(self, max_in_flight: int, limit: int, seconds: float) -> Sample:
        """publish -> fetch -> TriggerWorkflow -> ack, timed from StartModule to the last call.

        The messages are in the stream before the trigger starts; a latency sample
        is the gap between consecutive TriggerWorkflow calls (the cost per message)."""
        stream, subject, durable = TRIGGER_1 if max_in_flight == 1 else TRIGGER_16
        host = await self.env.plugin()
        sink = self.env.sink
        assert sink is not None
        handle = self._triggers.get(max_in_flight)
        if handle is None:
            handle = await host.create_trigger(
                SUBSCRIBE,
                f"pipeline:bench-{max_in_flight}",
                {"consumer": durable, "max_in_flight": max_in_flight},
            )
            self._triggers[max_in_flight] = handle
        await self.env.purge(stream)
        await self.env.fill(subject, limit)
        sink.arm(limit)
        began = sink.clock()
        await host.start_module(handle)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.done.wait(), seconds)
        arrivals = list(sink.arrivals)
        elapsed = (arrivals[-1] if arrivals else sink.clock()) - began
        sink.arm(1 << 62)
        await host.stop_module(handle)
        lat = [b - a for a, b in itertools.pairwise(arrivals)]
        return Sample(len(arrivals), elapsed, lat)

    async def trigger_1(self, limit: int, seconds: float) -> Sample:
        return await self.trigger(1, limit, seconds)

    async def trigger_16(self, limit: int, seconds: float) -> Sample:
        return await self.trigger(16, limit, seconds)
