"""The raw gRPC hop: a grpc.aio unary echo server in its own process, and its client.

The plugin paths cross a process boundary over a unix-socket gRPC channel, so
the baseline does too: the server runs as ``python -m workflow_eventbus.bench.echo
SOCKET`` and answers ``/bench.Echo/Message`` (a ``Message``) and
``/bench.Echo/Publish`` (a ``PublishRequest``) with the request it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from .._proto import eventbus_pb2 as pb
from ..core.errors import BrokerUnavailableError
from .loops import run_loop

SERVICE = "bench.Echo"
READY_TIMEOUT = 30.0


def _handlers() -> grpc.GenericRpcHandler[Any, Any]:
    async def echo(request: Any, context: Any) -> Any:
        return request

    methods = {
        "Message": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=pb.Message.FromString,
            response_serializer=pb.Message.SerializeToString,
        ),
        "Publish": grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=pb.PublishRequest.FromString,
            response_serializer=pb.PublishRequest.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def serve(path: str) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0.2)


class EchoServer:
    """The echo process plus a channel to it (``message`` and ``publish`` callables)."""

    def __init__(self, loop: str = "asyncio") -> None:
        self.loop = loop
        self._dir = Path(tempfile.mkdtemp(prefix="wfeb-echo-"))
        self.path = str(self._dir / "echo.sock")
        self._process: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None
        self.message: Any = None
        self.publish: Any = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, self.path, self.loop, stdin=asyncio.subprocess.DEVNULL
        )
        self.channel = grpc.aio.insecure_channel(f"unix:{self.path}")
        self.message = self.channel.unary_unary(
            f"/{SERVICE}/Message",
            request_serializer=pb.Message.SerializeToString,
            response_deserializer=pb.Message.FromString,
        )
        self.publish = self.channel.unary_unary(
            f"/{SERVICE}/Publish",
            request_serializer=pb.PublishRequest.SerializeToString,
            response_deserializer=pb.PublishRequest.FromString,
        )
        try:
            await asyncio.wait_for(self.channel.channel_ready(), READY_TIMEOUT)
        except TimeoutError as exc:
            await self.stop()
            raise BrokerUnavailableError("bench: the gRPC echo server did not start") from exc

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    path = argv[0]
    loop = argv[1] if len(argv) > 1 else "asyncio"
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # SIGTERM: stopped
        run_loop(serve(path), loop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
