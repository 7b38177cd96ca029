"""The engine's EngineCallbackService as the bench needs it: count TriggerWorkflow, nothing more.

The host harness converts every trigger's Struct to a dict for its handlers;
the real engine is Go and does that in microseconds. Here the engine side costs
what the echo server of the baselines costs (decode, answer), so the ratio
measures the plugin and not the stand-in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from .._proto import plugin_pb2 as ppb
from .._proto import plugin_pb2_grpc as pgrpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class TriggerSink:
    """Counts TriggerWorkflow calls for the trigger scenarios and records arrival times."""

    def __init__(self) -> None:
        self.expected = 0
        self.arrivals: list[float] = []
        self.done = asyncio.Event()
        self.clock: Callable[[], float] = time.perf_counter  # uvloop's loop.time() has 1 ms steps
        self._threshold = 0
        self._reached = asyncio.Event()
        self.keep_times = True

    def arm(self, expected: int) -> None:
        self.expected = expected
        self.arrivals = []
        self.done.clear()

    def record(self) -> None:
        self.arrivals.append(self.clock())
        if len(self.arrivals) >= self.expected:
            self.done.set()
        if len(self.arrivals) >= self._threshold:
            self._reached.set()

    async def reach(self, count: int) -> None:
        """Wait until at least ``count`` calls arrived."""
        if len(self.arrivals) >= count:
            return
        self._threshold = count
        self._reached.clear()
        await self._reached.wait()


class _Service(pgrpc.EngineCallbackServiceServicer):
    def __init__(self, sink: TriggerSink) -> None:
        self._sink = sink

    async def TriggerWorkflow(  # noqa: N802
        self, request: ppb.TriggerWorkflowRequest, context: Ctx
    ) -> ppb.ErrorResponse:
        self._sink.record()
        return ppb.ErrorResponse()

    async def Log(self, request: ppb.LogRequest, context: Ctx) -> empty_pb2.Empty:  # noqa: N802
        return empty_pb2.Empty()

    async def GetService(  # noqa: N802
        self, request: ppb.GetServiceRequest, context: Ctx
    ) -> ppb.GetServiceResponse:
        return ppb.GetServiceResponse(found=False)

    async def PublishMessage(  # noqa: N802
        self, request: ppb.PublishMessageRequest, context: Ctx
    ) -> ppb.PublishMessageResponse:
        return ppb.PublishMessageResponse(error="not available in the bench engine")

    async def Subscribe(self, request: ppb.SubscribeRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        return ppb.ErrorResponse(error="not available in the bench engine")

    async def Unsubscribe(  # noqa: N802
        self, request: ppb.UnsubscribeRequest, context: Ctx
    ) -> ppb.ErrorResponse:
        return ppb.ErrorResponse(error="not available in the bench engine")


class EngineStandIn:
    """Drop-in for the harness's CallbackServer (same start/stop/address)."""

    def __init__(self, sink: TriggerSink) -> None:
        self.sink = sink
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self, path: str) -> None:
        server = grpc.aio.server()
        pgrpc.add_EngineCallbackServiceServicer_to_server(_Service(self.sink), server)
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        self._server = server
        self.address = path

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0.2)
