"""``grpc.health.v1.Health`` answered from the brokers' connections.

go-plugin's host asks for the service ``plugin`` (``GRPCClient.Ping``); the
empty name is the whole server, which generic gRPC probes ask for. Both get
the same answer, worked out at each call from the bus:

* ``SERVING`` while no started broker module has lost its connection;
* ``NOT_SERVING`` while at least one has (``EventBus.brokers_down``), until
  its provider has reconnected.

A broker module that is not started (or stopped, or running degraded without
a URL by design) does not count. Other service names are ``NOT_FOUND`` on
Check and ``SERVICE_UNKNOWN`` on Watch, as the gRPC health protocol says.
Watch streams get a new answer whenever a broker's connection changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..engine.bus import EventBus

SERVICES = ("plugin", "")  # go-plugin's service name; "" = the whole server
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
Ctx = grpc.aio.ServicerContext[Any, Any]


class BusHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped base
    """Health of the plugin as its bus's broker connections say; ``close()`` when done."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._changed = asyncio.Event()
        self._remove: Callable[[], None] | None = bus.on_broker_state(self._broker_changed)

    def status(self, service: str = "plugin") -> int:
        """The ServingStatus of ``service`` now."""
        if service not in SERVICES:
            return SERVICE_UNKNOWN
        return NOT_SERVING if self.bus.brokers_down() else SERVING

    def _broker_changed(self, broker: str, up: bool) -> None:
        # Wake every Watch once: each waits on the event it took before this call.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: Ctx
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown health service {request.service!r}; this plugin answers "
                f"{' and '.join(repr(s) for s in SERVICES)}",
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: Ctx
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: int | None = None
        while True:
            changed = self._changed
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await changed.wait()

    def close(self) -> None:
        """Stop listening to the bus (Watch streams end with the server)."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()
