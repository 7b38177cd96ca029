"""Prometheus metrics on against off: two plugin processes, alike but for EVENTBUS_METRICS_ADDR.

Both run the same paths on their own streams of the bench's nats-server: the
trigger at max_in_flight 16 (publish -> fetch -> TriggerWorkflow -> ack, the
path with the most hook calls per second) and the publish step. While the "on"
process is measured, the bench scrapes its /metrics once a second, as a busy
Prometheus would, so the cost of rendering the text counts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from .._proto import eventbus_pb2 as pb
from ..core.errors import ProviderError
from ..core.lifecycle import cancel_and_wait
from ..core.names import SUBSCRIBE
from ..devservers.host import PluginHost
from ..devservers.processes import free_port
from .core import PAYLOAD, Sample, Scenario, timed
from .engine import TriggerSink, engine_stand_in
from .env import BenchEnv, plugin_environment

MAX_IN_FLIGHT = 16
SCRAPE_EVERY = 1.0  # seconds


class _Side:
    """One plugin process with its stream, consumer, trigger and publish step."""

    def __init__(self, tag: str, metrics_addr: str) -> None:
        self.stream = f"BENCH_MET_{tag.upper()}"
        self.subject = f"bench.met{tag}"
        self.durable = f"met-{tag}"
        self.metrics_addr = metrics_addr
        self.sink = TriggerSink()
        self.host: PluginHost | None = None
        self.trigger = ""
        self.publish = ""

    async def start(self, env: BenchEnv) -> None:
        environ = plugin_environment(env.plugin_loop)
        environ.pop("EVENTBUS_METRICS_ADDR", None)
        if self.metrics_addr:
            environ["EVENTBUS_METRICS_ADDR"] = self.metrics_addr
        host = PluginHost(env=environ)
        host.callback_server = engine_stand_in(self.sink)
        self.host = host
        await host.start()
        url = env.nats_server.url
        modules = [
            (
                "eventbus.broker",
                "bus",
                pb.ClusterConfig(provider="nats", deploy_target="self_hosted", dsn=url),
            ),
            (
                "eventbus.stream",
                self.stream,
                pb.StreamConfig(name=self.stream, subjects=[self.subject, f"{self.subject}.>"]),
            ),
            (
                "eventbus.consumer",
                self.durable,
                pb.ConsumerConfig(
                    name=self.durable,
                    stream_name=self.stream,
                    filter_subject=self.subject,
                    max_ack_pending=20000,
                ),
            ),
        ]
        handles = [await host.create_module(kind, name, typed=cfg) for kind, name, cfg in modules]
        for handle in handles:
            await host.init_module(handle)
        for handle in handles:
            await host.start_module(handle)
        self.trigger = await host.create_trigger(
            SUBSCRIBE,
            f"pipeline:{self.durable}",
            {"consumer": self.durable, "max_in_flight": MAX_IN_FLIGHT},
        )
        self.publish = await host.create_step(
            "step.eventbus.publish", f"pub-{self.durable}", {"subject": self.subject}
        )

    async def stop(self) -> None:
        host, self.host = self.host, None
        if host is not None:
            await host.shutdown()

    def started(self) -> PluginHost:
        if self.host is None or not self.trigger:
            raise ProviderError(f"bench: the {self.durable} plugin process is not running")
        return self.host


class MetricsPaths:
    def __init__(self, env: BenchEnv) -> None:
        self.env = env
        self.off = _Side("off", "")
        self.on = _Side("on", "")
        self.scrapes = 0

    def scenarios(self) -> list[Scenario]:
        on_vs_off = 0.95
        return [
            Scenario("metrics_off.trigger_mif16", self.trigger_off, 16000, latency="message"),
            Scenario(
                "metrics_on.trigger_mif16",
                self.trigger_on,
                16000,
                "metrics_off.trigger_mif16",
                on_vs_off,
                latency="message",
            ),
            Scenario("metrics_off.step_publish", self.publish_off, 3000, latency="message"),
            Scenario(
                "metrics_on.step_publish",
                self.publish_on,
                3000,
                "metrics_off.step_publish",
                on_vs_off,
                latency="message",
            ),
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Both processes, and the scraper of the "on" one, for the group's rounds.

        A start that fails leaves the scenarios to report it (each raises)."""
        port = free_port()
        self.on.metrics_addr = f"127.0.0.1:{port}"
        scraper: asyncio.Task[None] | None = None
        try:
            try:
                for side in (self.off, self.on):
                    await side.start(self.env)
                scraper = asyncio.create_task(self._scrape(port), name="bench metrics scraper")
            except Exception as exc:
                print(f"# metrics: plugin processes did not start: {exc}", flush=True)
            yield
        finally:
            if scraper is not None:
                await cancel_and_wait(scraper)
            for side in (self.on, self.off):
                await side.stop()
            if self.scrapes:
                print(f"# metrics: {self.scrapes} scrapes of the metrics_on process", flush=True)

    async def _scrape(self, port: int) -> None:
        request = b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n"
        while True:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(request)
                    await writer.drain()
                    if b" 200 " in (await reader.read()).split(b"\r\n", 1)[0]:
                        self.scrapes += 1
                finally:
                    writer.close()
            await asyncio.sleep(SCRAPE_EVERY)

    # -- the paths -------------------------------------------------------------------
    async def trigger(self, side: _Side, limit: int, seconds: float) -> Sample:
        """Messages in the stream first, then StartModule until the last TriggerWorkflow."""
        host, sink = side.started(), side.sink
        await self.env.purge(side.stream)
        await self.env.fill(side.subject, limit)
        sink.arm(limit)
        began = sink.clock()
        await host.start_module(side.trigger)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.done.wait(), seconds)
        arrivals = list(sink.arrivals)
        elapsed = (arrivals[-1] if arrivals else sink.clock()) - began
        sink.arm(1 << 62)
        await host.stop_module(side.trigger)
        return Sample(len(arrivals), elapsed, [b - a for a, b in itertools.pairwise(arrivals)])

    async def publish(self, side: _Side, limit: int, seconds: float) -> Sample:
        """ExecuteStep(step.eventbus.publish), one message per call, awaited in turn."""
        host = side.started()
        await self.env.purge(side.stream)
        request = pb.PublishRequest(payload=PAYLOAD)

        async def one() -> int:
            answer = await host.execute_step(side.publish, request)
            if answer.error:
                raise ProviderError(f"bench: publish step failed: {answer.error}")
            return 1

        return await timed(limit, seconds, one)

    async def trigger_off(self, limit: int, seconds: float) -> Sample:
        return await self.trigger(self.off, limit, seconds)

    async def trigger_on(self, limit: int, seconds: float) -> Sample:
        return await self.trigger(self.on, limit, seconds)

    async def publish_off(self, limit: int, seconds: float) -> Sample:
        return await self.publish(self.off, limit, seconds)

    async def publish_on(self, limit: int, seconds: float) -> Sample:
        return await self.publish(self.on, limit, seconds)
