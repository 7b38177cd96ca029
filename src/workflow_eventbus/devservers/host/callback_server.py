"""The engine's EngineCallbackService, served by the host harness.

``TriggerWorkflow`` hands each call to a pluggable async handler that returns
an error text ('' = the workflow succeeded), exactly how the engine reports
pipeline failures (in-band, status OK). ``Log`` calls are kept in ``logs`` (the
newest 1000) and logged, as ``cmd/server`` prints them. The other methods
answer like ``cmd/server`` does: GetService finds nothing, Publish/Subscribe
are not wired.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format

from ..._proto import plugin_pb2 as ppb
from ..._proto import plugin_pb2_grpc as pgrpc

log = logging.getLogger("workflow_eventbus.devservers.host")
Ctx = grpc.aio.ServicerContext[Any, Any]


@dataclass(slots=True)
class TriggerCall:
    trigger_type: str
    action: str
    data: dict[str, Any]


@dataclass(slots=True)
class LogEntry:
    """One ``Log`` call of the plugin: level, message and the fields as a dict."""

    level: str
    message: str
    fields: dict[str, Any]


TriggerHandler = Callable[[TriggerCall], Awaitable[str]]


async def _accept(call: TriggerCall) -> str:
    return ""


class EngineCallbacks(pgrpc.EngineCallbackServiceServicer):
    """The engine's callback service; subclasses may answer TriggerWorkflow differently."""

    def __init__(self, owner: CallbackServer) -> None:
        self._owner = owner

    async def TriggerWorkflow(  # noqa: N802
        self, request: ppb.TriggerWorkflowRequest, context: Ctx
    ) -> ppb.ErrorResponse:
        data = json_format.MessageToDict(request.data)
        call = TriggerCall(request.trigger_type, request.action, data)
        self._owner.calls += 1
        try:
            error = await self._owner.handler(call)
        except Exception as exc:  # a failing handler is a failed workflow
            error = f"workflow execution failed: {exc}"
        return ppb.ErrorResponse(error=error)

    async def GetService(  # noqa: N802
        self, request: ppb.GetServiceRequest, context: Ctx
    ) -> ppb.GetServiceResponse:
        return ppb.GetServiceResponse(found=False)

    async def Log(self, request: ppb.LogRequest, context: Ctx) -> empty_pb2.Empty:  # noqa: N802
        entry = LogEntry(request.level, request.message, json_format.MessageToDict(request.fields))
        self._owner.logs.append(entry)
        log.info("[plugin][%s] %s %s", entry.level, entry.message, entry.fields)
        return empty_pb2.Empty()

    async def PublishMessage(  # noqa: N802
        self, request: ppb.PublishMessageRequest, context: Ctx
    ) -> ppb.PublishMessageResponse:
        return ppb.PublishMessageResponse(error="message publish handler not configured")

    async def Subscribe(self, request: ppb.SubscribeRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        return ppb.ErrorResponse(error="message subscribe handler not configured")

    async def Unsubscribe(  # noqa: N802
        self, request: ppb.UnsubscribeRequest, context: Ctx
    ) -> ppb.ErrorResponse:
        return ppb.ErrorResponse(error=f"no subscription found for topic {request.topic!r}")


class CallbackServer:
    """A grpc.aio server on a unix socket with only EngineCallbackService."""

    def __init__(
        self,
        handler: TriggerHandler | None = None,
        service: Callable[[CallbackServer], EngineCallbacks] = EngineCallbacks,
    ) -> None:
        self.handler: TriggerHandler = handler or _accept
        self._service = service
        self.address = ""
        self.calls = 0
        self.logs: deque[LogEntry] = deque(maxlen=1000)
        self._server: grpc.aio.Server | None = None

    async def start(self, path: str) -> None:
        server = grpc.aio.server()
        pgrpc.add_EngineCallbackServiceServicer_to_server(self._service(self), server)
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        self._server = server
        self.address = path

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0.2)
