"""The go-plugin side channels: GRPCBroker, GRPCController and GRPCStdio.

The engine opens ``plugin.GRPCBroker/StartStream`` right after the handshake
and sends, down that stream, where its EngineCallbackService listens
(``ConnInfo{service_id, network, address}``). The stream has to stay open for
the life of the process: if it ends, the engine's broker closes for good.
We never send anything up the stream (the plugin never accepts connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import empty_pb2

from .._proto import grpc_broker_pb2 as bpb
from .._proto import grpc_broker_pb2_grpc as bgrpc
from .._proto import grpc_controller_pb2 as cpb
from .._proto import grpc_controller_pb2_grpc as cgrpc
from .._proto import grpc_stdio_pb2 as spb
from .._proto import grpc_stdio_pb2_grpc as sgrpc

log = logging.getLogger("workflow_eventbus.plugin")


class ConnInfoStore:
    """ConnInfo messages by service id; waiters are woken when one arrives."""

    def __init__(self) -> None:
        self._infos: dict[int, bpb.ConnInfo] = {}
        self._changed = asyncio.Condition()

    async def put(self, info: bpb.ConnInfo) -> None:
        async with self._changed:
            self._infos[info.service_id] = info
            self._changed.notify_all()

    def get(self, service_id: int) -> bpb.ConnInfo | None:
        return self._infos.get(service_id)

    async def wait(self, service_id: int, timeout: float) -> bpb.ConnInfo | None:
        """The ConnInfo for ``service_id``, waiting up to ``timeout`` seconds."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: service_id in self._infos), timeout
                )
            return self._infos.get(service_id)


class BrokerServicer(bgrpc.GRPCBrokerServicer):
    """Stores every ConnInfo the host sends; holds the response stream open."""

    def __init__(self, store: ConnInfoStore, stopping: asyncio.Event) -> None:
        self._store = store
        self._stopping = stopping

    async def StartStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[bpb.ConnInfo],
        context: grpc.aio.ServicerContext[bpb.ConnInfo, bpb.ConnInfo],
    ) -> AsyncIterator[bpb.ConnInfo]:
        reader = asyncio.create_task(self._read(request_iterator), name="broker-reader")
        try:
            await self._stopping.wait()  # the stream lives as long as the process
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return
        yield  # an async generator that never sends: the plugin accepts no connections

    async def _read(self, requests: AsyncIterator[bpb.ConnInfo]) -> None:
        try:
            async for info in requests:
                if info.HasField("knock"):
                    continue  # multiplexing is never enabled by the engine
                log.debug(
                    "broker: service %d at %s:%s", info.service_id, info.network, info.address
                )
                await self._store.put(info)
        except grpc.aio.AioRpcError as exc:
            log.debug("broker stream ended: %s", exc.code())
        log.debug("broker: host closed its side of the stream")


class ControllerServicer(cgrpc.GRPCControllerServicer):
    """``Shutdown`` asks the process to stop and answers once it has drained.

    go-plugin waits for this answer with no deadline of its own and starts its 2 s
    kill timer only after it, so running pipelines get their triggers'
    ``drain_timeout`` here. ``on_shutdown`` receives the time the host left on the
    call (None: no deadline) and returns when the triggers have drained."""

    def __init__(self, on_shutdown: Callable[[float | None], Awaitable[None]]) -> None:
        self._on_shutdown = on_shutdown

    async def Shutdown(  # noqa: N802
        self, request: cpb.Empty, context: grpc.aio.ServicerContext[cpb.Empty, cpb.Empty]
    ) -> cpb.Empty:
        await self._on_shutdown(context.time_remaining())
        return cpb.Empty()


class StdioServicer(sgrpc.GRPCStdioServicer):
    """We log to the real stderr, so the stdio stream carries nothing; it stays
    open until the process stops, which is what the host expects."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping

    async def StreamStdio(  # noqa: N802
        self,
        request: empty_pb2.Empty,
        context: grpc.aio.ServicerContext[empty_pb2.Empty, spb.StdioData],
    ) -> AsyncIterator[spb.StdioData]:
        await self._stopping.wait()
        return
        yield  # an async generator with nothing to send
