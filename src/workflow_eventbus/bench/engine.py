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

from .._proto import plugin_pb2 as ppb
from ..devservers.host.callback_server import CallbackServer, EngineCallbacks

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


def engine_stand_in(sink: TriggerSink) -> CallbackServer:
    """The harness's callback server whose TriggerWorkflow only counts the call."""

    class _Counting(EngineCallbacks):
        async def TriggerWorkflow(  # noqa: N802
            self, request: ppb.TriggerWorkflowRequest, context: Ctx
        ) -> ppb.ErrorResponse:
            sink.record()
            return ppb.ErrorResponse()

    return CallbackServer(service=_Counting)
