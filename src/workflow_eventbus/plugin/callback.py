"""The client side of the engine's EngineCallbackService.

``ConfigureCallback{broker_id}`` names the broker service id under which the
engine advertised its callback listener (a ConnInfo on the broker stream).
The two can arrive in either order, so we wait up to ``wait`` seconds for the
ConnInfo, then dial ``unix:<address>`` (or ``host:port`` for tcp).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf import struct_pb2

from .._proto import plugin_pb2 as ppb
from .._proto import plugin_pb2_grpc as pgrpc
from ..errors import BrokerUnavailableError, ProviderError
from .broker import ConnInfoStore

log = logging.getLogger("workflow_eventbus.plugin")

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class CallbackClient:
    """One EngineCallbackService channel, replaced on each ConfigureCallback."""

    def __init__(self, store: ConnInfoStore, *, wait: float = 5.0) -> None:
        self._store = store
        self._wait = wait
        self._channel: grpc.aio.Channel | None = None
        self._stub: pgrpc.EngineCallbackServiceAsyncStub | None = None

    @property
    def configured(self) -> bool:
        return self._stub is not None

    async def configure(self, broker_id: int) -> str:
        """Connect to the callback service; returns an error text ('' on success)."""
        if broker_id == 0:
            return "callback broker id is required"
        info = await self._store.wait(broker_id, self._wait)
        if info is None:
            return (
                f"dial callback broker: timeout waiting for connection info "
                f"(broker id {broker_id} was never announced on the GRPCBroker stream "
                f"within {self._wait:g}s)"
            )
        target = f"unix:{info.address}" if info.network == "unix" else info.address
        channel = grpc.aio.insecure_channel(target, options=UNLIMITED)
        await self.close()
        self._channel = channel
        self._stub = pgrpc.EngineCallbackServiceStub(channel)
        log.info("callback service configured (broker id %d, %s)", broker_id, target)
        return ""

    async def trigger_workflow(
        self, trigger_type: str, action: str, fill: Callable[[struct_pb2.Struct], None]
    ) -> None:
        """Run the workflow synchronously; raise when the engine reports a failure.

        ``fill`` writes the data into the request's Struct in place (building a
        Struct and passing it would copy it once more)."""
        stub = self._stub
        if stub is None:
            raise BrokerUnavailableError(
                f"trigger {trigger_type}: the trigger callback client is not configured; "
                "the engine must call ConfigureCallback (only `workflow server` does, "
                "wfctl never delivers triggers)"
            )
        request = ppb.TriggerWorkflowRequest(trigger_type=trigger_type, action=action)
        fill(request.data)
        try:
            response = await stub.TriggerWorkflow(request)
        except grpc.aio.AioRpcError as exc:
            raise ProviderError(
                f"trigger {trigger_type}: TriggerWorkflow RPC failed: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
        if response.error:
            raise ProviderError(f"trigger {trigger_type}: workflow failed: {response.error}")

    async def log(self, level: str, message: str) -> None:
        if self._stub is not None:
            await self._stub.Log(ppb.LogRequest(level=level, message=message))

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)
