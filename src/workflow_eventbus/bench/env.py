"""The servers and clients one bench run shares: NATS, the echo process, the plugin, Postgres."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext, JetStreamManager

from .._proto import eventbus_pb2 as pb
from ..core.lifecycle import Service
from ..devservers.host import PluginHost
from ..devservers.nats_server import EmbeddedNats
from ..engine.bus import EventBus
from ..plugin.transport import LOOP_ENV
from .core import PAYLOAD
from .echo import EchoServer
from .engine import TriggerSink, engine_stand_in

# One stream per path so no scenario sees another's messages.
PUB_STREAM, PUB_SUBJECT = "BENCH_PUB", "bench.pub"
RAW_FETCH = ("BENCH_RAW_FETCH", "bench.rawfetch", "raw-fetch")
STEP_FETCH = ("BENCH_STEP_FETCH", "bench.stepfetch", "step-fetch")
RAW_TRIGGER = ("BENCH_RAW_TRIG", "bench.rawtrig", "raw-trig")
RAW_TRIGGER_16 = ("BENCH_RAW_TRIG16", "bench.rawtrig16", "raw-trig-16")
TRIGGER_1 = ("BENCH_TRIG1", "bench.trig1", "trig-1")
TRIGGER_16 = ("BENCH_TRIG16", "bench.trig16", "trig-16")
PLUGIN_STREAMS = (STEP_FETCH, TRIGGER_1, TRIGGER_16)
LOCAL_STREAMS = (RAW_FETCH, RAW_TRIGGER, RAW_TRIGGER_16)
FILL_CHUNK = 2000


def plugin_environment(loop: str) -> dict[str, str]:
    """The plugin's environment; ``loop`` picks its event loop (see plugin.transport)."""
    env = dict(os.environ)
    if loop in ("asyncio", "uvloop"):
        env[LOOP_ENV] = loop
    else:
        env.pop(LOOP_ENV, None)  # the plugin's own default: uvloop when installed
    return env


class BenchEnv(Service):
    """Everything a run needs, started once and torn down in reverse order."""

    def __init__(self, *, loop: str = "asyncio", plugin_loop: str = "default") -> None:
        self.loop = loop
        self.plugin_loop = plugin_loop
        self.nats_server = EmbeddedNats()
        self.echo = EchoServer(loop)
        self.bus = EventBus(environ={})
        self.nc: NatsClient | None = None
        self.host: PluginHost | None = None
        self.sink: TriggerSink | None = None
        self.plugin_handles: dict[str, str] = {}

    async def start(self) -> None:
        await self.nats_server.start()
        self.nc = await nats.connect(self.nats_server.url)
        broker = self.bus.create_module(
            "eventbus.broker",
            "bench",
            {"provider": "nats", "deploy_target": "self_hosted", "dsn": self.nats_server.url},
        )
        await broker.init()
        await broker.start()
        for stream, subject in [(PUB_STREAM, PUB_SUBJECT), *[(s, j) for s, j, _ in LOCAL_STREAMS]]:
            await self.bus.provider().ensure_stream(_stream(stream, subject))
        for stream, subject, durable in LOCAL_STREAMS:
            await self.bus.provider().ensure_consumer(_consumer(stream, durable, subject))
        await self.echo.start()

    async def teardown(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self.host is not None:
            await self.host.shutdown()
            self.host = None
        await self.echo.stop()
        await self.bus.close()
        if self.nc is not None:
            await self.nc.close()
            self.nc = None
        await self.nats_server.stop()

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None
        return self.nc.jetstream()

    @property
    def jsm(self) -> JetStreamManager:
        assert self.nc is not None
        return self.nc.jsm()

    async def plugin(self) -> PluginHost:
        """The plugin process (started on first use) with the bench's modules created."""
        if self.host is not None:
            return self.host
        self.sink = TriggerSink()
        host = PluginHost(env=plugin_environment(self.plugin_loop))
        host.callback_server = engine_stand_in(self.sink)
        await host.start()
        self.host = host
        handles = self.plugin_handles
        handles["bus"] = await host.create_module(
            "eventbus.broker",
            "bus",
            typed=pb.ClusterConfig(
                provider="nats", deploy_target="self_hosted", dsn=self.nats_server.url
            ),
        )
        handles["pub"] = await host.create_module(
            "eventbus.stream", PUB_STREAM, typed=_stream(PUB_STREAM, PUB_SUBJECT)
        )
        for stream, subject, durable in PLUGIN_STREAMS:
            handles[stream] = await host.create_module(
                "eventbus.stream", stream, typed=_stream(stream, subject)
            )
            handles[durable] = await host.create_module(
                "eventbus.consumer", durable, typed=_consumer(stream, durable, subject)
            )
        for handle in handles.values():
            await host.init_module(handle)
        for handle in handles.values():
            await host.start_module(handle)
        return host

    async def purge(self, stream: str) -> None:
        await self.jsm.purge_stream(stream)

    async def fill(self, subject: str, count: int, payload: bytes = PAYLOAD) -> None:
        """Put ``count`` messages on ``subject`` (pipelined; not timed)."""
        js = self.js
        for start in range(0, count, FILL_CHUNK):
            futures = [
                await js.publish_async(subject, payload)
                for _ in range(min(FILL_CHUNK, count - start))
            ]
            await asyncio.gather(*futures)

    async def pending(self, stream: str, durable: str) -> tuple[int, int]:
        info: Any = await self.jsm.consumer_info(stream, durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)


def _stream(name: str, subject: str) -> pb.StreamConfig:
    return pb.StreamConfig(name=name, subjects=[subject, f"{subject}.>"])


def _consumer(stream: str, durable: str, subject: str) -> pb.ConsumerConfig:
    return pb.ConsumerConfig(
        name=durable, stream_name=stream, filter_subject=subject, max_ack_pending=20000
    )
