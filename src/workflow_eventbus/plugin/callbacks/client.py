"""The client side of the engine's EngineCallbackService.

``ConfigureCallback{broker_id}`` names the broker service id under which the
engine advertised its callback listener (a ConnInfo on the broker stream).
The two can arrive in either order, so we wait up to ``wait`` seconds for the
ConnInfo, then dial ``unix:<address>`` (or ``host:port`` for tcp). Calls go
through :class:`~.unary.UnaryChannel`, our lean HTTP/2 unary client: one
TriggerWorkflow per delivered message is the plugin's hottest RPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf import struct_pb2

from ..._proto import plugin_pb2 as ppb
from ...core.errors import BrokerUnavailableError, ProviderError
from ..broker import ConnInfoStore
from .h2 import RpcError, UnaryChannel

log = logging.getLogger("workflow_eventbus.plugin")

_SERVICE = ppb.DESCRIPTOR.services_by_name["EngineCallbackService"].full_name
TRIGGER_WORKFLOW = f"/{_SERVICE}/TriggerWorkflow"


class CallbackClient:
    """One EngineCallbackService channel, replaced on each ConfigureCallback."""

    def __init__(self, store: ConnInfoStore, *, wait: float = 5.0) -> None:
        self._store = store
        self._wait = wait
        self._channel: UnaryChannel | None = None

    @property
    def configured(self) -> bool:
        return self._channel is not None

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
        await self.close()
        self._channel = UnaryChannel(info.network, info.address)
        log.info(
            "callback service configured (broker id %d, %s %s)",
            broker_id,
            info.network,
            info.address,
        )
        return ""

    async def trigger_workflow(
        self, trigger_type: str, action: str, fill: Callable[[struct_pb2.Struct], None]
    ) -> None:
        """Run the workflow synchronously; raise when the engine reports a failure.

        ``fill`` writes the data into the request's Struct in place (building a
        Struct and passing it would copy it once more)."""
        channel = self._channel
        if channel is None:
            raise BrokerUnavailableError(
                f"trigger {trigger_type}: the trigger callback client is not configured; "
                "the engine must call ConfigureCallback (only `workflow server` does, "
                "wfctl never delivers triggers)"
            )
        request = ppb.TriggerWorkflowRequest(trigger_type=trigger_type, action=action)
        fill(request.data)
        try:
            answer = await channel.call(TRIGGER_WORKFLOW, request.SerializeToString())
        except RpcError as exc:
            raise ProviderError(
                f"trigger {trigger_type}: TriggerWorkflow RPC failed: {exc.code}: {exc.details}"
            ) from exc
        response = ppb.ErrorResponse.FromString(answer)
        if response.error:
            raise ProviderError(f"trigger {trigger_type}: workflow failed: {response.error}")

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
