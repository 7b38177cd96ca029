"""The client side of the engine's EngineCallbackService.

``ConfigureCallback{broker_id}`` names the broker service id under which the
engine advertised its callback listener (a ConnInfo on the broker stream).
The two can arrive in either order, so we wait up to ``wait`` seconds for the
ConnInfo, then dial ``unix:<address>`` (or ``host:port`` for tcp). Calls go
through a :class:`~.transport.UnaryTransport` (our lean HTTP/2 client unless
``WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT=grpc``): one TriggerWorkflow per
delivered message is the plugin's hottest RPC, and each has a deadline
(``WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT``, default 300 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from google.protobuf import struct_pb2

from ..._proto import plugin_pb2 as ppb
from ...core.errors import BrokerUnavailableError, ProviderError
from ..broker import ConnInfoStore
from .errors import RpcError
from .transport import (
    TIMEOUT_ENV,
    UnaryTransport,
    callback_timeout,
    check_kind,
    check_timeout,
    open_channel,
    transport_kind,
)

log = logging.getLogger("workflow_eventbus.plugin")

_SERVICE = ppb.DESCRIPTOR.services_by_name["EngineCallbackService"].full_name
TRIGGER_WORKFLOW = f"/{_SERVICE}/TriggerWorkflow"


class CallbackClient:
    """One EngineCallbackService channel, replaced on each ConfigureCallback.

    ``timeout`` (seconds) and ``transport`` (``h2`` or ``grpc``) override what the
    environment (``environ``, default ``os.environ``) says; a bad value of either
    is a :class:`~workflow_eventbus.core.errors.ConfigError` here, at start-up.
    """

    def __init__(
        self,
        store: ConnInfoStore,
        *,
        wait: float = 5.0,
        timeout: float | None = None,
        transport: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._wait = wait
        self.timeout = (
            callback_timeout(environ)
            if timeout is None
            else check_timeout(timeout, "CallbackClient timeout", timeout)
        )
        self.transport = (
            transport_kind(environ)
            if transport is None
            else check_kind(transport, "CallbackClient transport")
        )
        self._channel: UnaryTransport | None = None

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
        self._channel = open_channel(info.network, info.address, kind=self.transport)
        log.info(
            "callback service configured (broker id %d, %s %s, %s transport, deadline %gs)",
            broker_id,
            info.network,
            info.address,
            self.transport,
            self.timeout,
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
            answer = await channel.unary(
                TRIGGER_WORKFLOW, request.SerializeToString(), self.timeout
            )
        except RpcError as exc:
            hint = ""
            if exc.code == "DEADLINE_EXCEEDED":
                hint = (
                    f" (the callback deadline is {self.timeout:g}s; set {TIMEOUT_ENV} "
                    "higher if pipelines legitimately run longer)"
                )
            raise ProviderError(
                f"trigger {trigger_type}: TriggerWorkflow RPC failed: "
                f"{exc.code}: {exc.details}{hint}"
            ) from exc
        response = ppb.ErrorResponse.FromString(answer)
        if response.error:
            raise ProviderError(f"trigger {trigger_type}: workflow failed: {response.error}")

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()
