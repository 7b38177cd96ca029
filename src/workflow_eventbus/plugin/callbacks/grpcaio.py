"""The callback transport on ``grpc.aio``: the reference implementation.

It costs about three times the CPU per call of :mod:`.h2` (docs/performance.md,
session 4) and is there to compare against and to fall back on
(``WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT=grpc``). Requests and answers pass as
raw bytes (no serializers); the deadline is grpc's own (``timeout=``), which
sends ``grpc-timeout`` and cancels the stream when it passes. grpc's C core
resends calls above a GOAWAY's last stream by itself, reconnects with its own
backoff (kept short: the engine is local), and fails a call at once when the
engine cannot be reached (no wait-for-ready). It does not resend a call the
server refused (RST_STREAM REFUSED_STREAM, which a server with a low stream
limit sends to a client that opened streams before reading its SETTINGS), so
this channel does, within the call's deadline, as the HTTP/2 client does. The C
core says so only in its details text (``REFUSED_TEXT``). Failures become the
same :class:`RpcError` codes as the HTTP/2 client's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from .errors import RpcError
from .h2 import RESENDS

OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.enable_retries", 1),  # transparent resends of unprocessed calls
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
REFUSED_TEXT = "Received RST_STREAM with error code 7"  # the C core's words for a refusal
NO_CONNECTION_TEXT = "failed to connect to all addresses"


class GrpcChannel:
    """Unary calls to one gRPC server through a ``grpc.aio`` channel.

    ``network`` is ``unix`` (``address`` a socket path) or ``tcp`` (``host:port``).
    Connecting is grpc's business (its backoff); a call waits for it at most
    until its deadline.
    """

    def __init__(self, network: str, address: str) -> None:
        self.network = network
        self.address = address
        target = f"unix:{address}" if network == "unix" else address
        self._channel = grpc.aio.insecure_channel(target, options=OPTIONS)
        self._methods: dict[str, Any] = {}
        self._closed = False

    async def unary(self, method: str, request: bytes, timeout: float) -> bytes:
        """Call ``method`` with the serialized ``request``; the answer's bytes, or
        :class:`RpcError` (``DEADLINE_EXCEEDED`` once ``timeout`` seconds have passed)."""
        if self._closed:
            raise RpcError("UNAVAILABLE", "the callback channel was closed")
        if timeout <= 0:
            raise RpcError("DEADLINE_EXCEEDED", f"the call's deadline ({timeout:g}s) had passed")
        call = self._methods.get(method)
        if call is None:
            call = self._methods[method] = self._channel.unary_unary(method, None, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in range(1, RESENDS + 1):
            try:
                answer: bytes = await call(request, timeout=timeout)
                return answer
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                refused = code is grpc.StatusCode.UNAVAILABLE and REFUSED_TEXT in details
                timeout = deadline - loop.time()
                if not refused or attempt == RESENDS or timeout <= 0:
                    raise self._error(code.name, details) from exc
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    # close() cancelled the call, not our caller: fail it as h2 does
                    raise RpcError("UNAVAILABLE", "the callback channel was closed") from None
                raise
            await asyncio.sleep(0.001 * (attempt - 1))  # refused: the peer is at its limit
        raise AssertionError("unreachable")

    def _error(self, code: str, details: str) -> RpcError:
        if code == "UNAVAILABLE" and details.startswith(NO_CONNECTION_TEXT):
            details = f"cannot connect to the engine at {self.address}: {details}"
        return RpcError(code, details)

    async def close(self) -> None:
        self._closed = True
        await self._channel.close(None)
