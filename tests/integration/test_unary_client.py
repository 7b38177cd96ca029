"""Both callback transports (our HTTP/2 client, grpc.aio) against a grpc.aio server.

grpc's C core is a strict HTTP/2 peer: it checks our preface, settings, flow
control and header blocks, and sends us what a Go engine sends (SETTINGS,
WINDOW_UPDATE, PING, GOAWAY, RST_STREAM, trailers-only errors). Every test runs
for each transport (``kind``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from workflow_eventbus.plugin.callbacks.errors import RpcError
from workflow_eventbus.plugin.callbacks.transport import UnaryTransport, open_channel

T = 30.0  # seconds: the deadline of calls that should never reach it
SERVICE = "test.Unary"
ECHO, FAIL, HOLD = f"/{SERVICE}/Echo", f"/{SERVICE}/Fail", f"/{SERVICE}/Hold"


class Server:
    """A grpc.aio server answering Echo, Fail and Hold with raw bytes."""

    def __init__(self, path: str, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.path = path
        self.options = list(options)
        self.active = 0
        self.most_active = 0
        self.release = asyncio.Event()
        self.held = 0
        self.cancelled = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        methods = {
            "Echo": grpc.unary_unary_rpc_method_handler(self._echo),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail),
            "Hold": grpc.unary_unary_rpc_method_handler(self._hold),
        }
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", -1), *self.options]
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, methods),)
        )
        self.server.add_insecure_port(f"unix:{self.path}")
        await self.server.start()

    async def stop(self, grace: float | None) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    async def _echo(self, request: bytes, context: Any) -> bytes:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await asyncio.sleep(0.01 if request == b"slow" else 0)
            return request
        finally:
            self.active -= 1

    async def _fail(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.decode())
        raise AssertionError("abort returns by raising")

    async def _hold(self, request: bytes, context: Any) -> bytes:
        self.held += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return request


@pytest.fixture(params=["h2", "grpc"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def hold_one(
    server: Server, body: bytes, kind: str
) -> tuple[UnaryTransport, asyncio.Task[bytes]]:
    """A channel to ``server`` with one call parked in the server's Hold method."""
    channel = open_channel("unix", server.path, kind=kind)
    server.release.clear()
    held = asyncio.create_task(channel.unary(HOLD, body, T))
    async with asyncio.timeout(5):
        while server.held == 0:
            await asyncio.sleep(0.005)
    return channel, held


async def reconnected(channel: UnaryTransport, seconds: float = 5.0) -> None:
    """Poll with calls until one is answered."""
    async with asyncio.timeout(seconds):
        while True:
            try:
                await channel.unary(ECHO, b"ping", T)
                return
            except RpcError as exc:
                assert exc.code == "UNAVAILABLE"
                await asyncio.sleep(0.02)


@pytest_asyncio.fixture(loop_scope="session")
async def socket_path() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="wfeb-unary-") as directory:
        yield str(Path(directory) / "engine.sock")


@pytest_asyncio.fixture(loop_scope="session")
async def server(socket_path: str) -> AsyncIterator[Server]:
    running = Server(socket_path)
    await running.start()
    yield running
    running.release.set()
    await running.stop(None)


async def test_concurrent_calls_each_get_their_own_answer(server: Server, kind: str) -> None:
    channel = open_channel("unix", server.path, kind=kind)
    bodies = [os.urandom(i % 300) for i in range(300)]
    answers = await asyncio.gather(*(channel.unary(ECHO, body, T) for body in bodies))
    assert answers == bodies
    await channel.close()
    with pytest.raises(RpcError, match="closed"):  # no new connection after close
        await channel.unary(ECHO, b"late", T)


async def test_bodies_beyond_every_window_and_frame_size(server: Server, kind: str) -> None:
    # 3 MB both ways: cut to the peer's frame size, paced by its windows.
    channel = open_channel("unix", server.path, kind=kind)
    bodies = [os.urandom(3_000_000), os.urandom(200_000), b""]
    answers = await asyncio.gather(*(channel.unary(ECHO, body, T) for body in bodies))
    assert answers == bodies
    assert await channel.unary(ECHO, b"after", T) == b"after"
    await channel.close()


async def test_a_status_is_raised_with_its_code_and_details(server: Server, kind: str) -> None:
    channel = open_channel("unix", server.path, kind=kind)
    with pytest.raises(RpcError) as failed:
        await channel.unary(FAIL, "pipeline said no: 100% ünicode".encode(), T)
    assert failed.value.code == "INVALID_ARGUMENT"
    assert failed.value.details == "pipeline said no: 100% ünicode"
    with pytest.raises(RpcError) as missing:
        await channel.unary(f"/{SERVICE}/Nope", b"", T)
    assert missing.value.code == "UNIMPLEMENTED"
    assert await channel.unary(ECHO, b"still fine", T) == b"still fine"
    await channel.close()


async def test_an_early_answer_stops_a_body_still_being_sent(server: Server, kind: str) -> None:
    # The server refuses an unknown method on its headers; our 3 MB body is then
    # still waiting for window space and must not keep the call open.
    channel = open_channel("unix", server.path, kind=kind)
    async with asyncio.timeout(10):
        with pytest.raises(RpcError) as missing:
            await channel.unary(f"/{SERVICE}/Nope", os.urandom(3_000_000), T)
    assert missing.value.code == "UNIMPLEMENTED"
    assert await channel.unary(ECHO, b"next", T) == b"next"
    await channel.close()


async def test_the_servers_stream_limit_queues_calls(socket_path: str, kind: str) -> None:
    limited = Server(socket_path, [("grpc.max_concurrent_streams", 2)])
    await limited.start()
    try:
        channel = open_channel("unix", socket_path, kind=kind)
        answers = await asyncio.gather(*(channel.unary(ECHO, b"slow", T) for _ in range(20)))
        assert answers == [b"slow"] * 20
        assert limited.most_active == 2
        await channel.close()
    finally:
        await limited.stop(None)


async def test_a_cancelled_call_resets_its_stream(server: Server, kind: str) -> None:
    channel, held = await hold_one(server, b"x", kind)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    async with asyncio.timeout(5):
        while server.cancelled == 0:  # the server saw the RST_STREAM
            await asyncio.sleep(0.005)
    assert await channel.unary(ECHO, b"next", T) == b"next"
    await channel.close()


async def test_a_lost_server_fails_open_calls_and_the_next_call_reconnects(
    socket_path: str, kind: str
) -> None:
    first = Server(socket_path)
    await first.start()
    channel, held = await hold_one(first, b"x", kind)
    await first.stop(0)
    with pytest.raises(RpcError) as lost:
        await held
    assert lost.value.code in ("UNAVAILABLE", "CANCELLED")
    assert not lost.value.unprocessed  # it reached the server: no silent resend
    with pytest.raises(RpcError) as down:
        await channel.unary(ECHO, b"x", T)
    assert down.value.code == "UNAVAILABLE"
    second = Server(socket_path)
    await second.start()
    try:
        if kind == "grpc":  # grpc reconnects on its own backoff: wait for it
            await reconnected(channel)
        assert await channel.unary(ECHO, b"back", T) == b"back"
    finally:
        await channel.close()
        await second.stop(None)


async def test_a_graceful_shutdown_lets_open_calls_finish(socket_path: str, kind: str) -> None:
    draining = Server(socket_path)
    await draining.start()
    channel, held = await hold_one(draining, b"finish me", kind)
    stopping = asyncio.create_task(draining.stop(5))  # GOAWAY, then wait for open calls
    await asyncio.sleep(0.1)
    draining.release.set()
    assert await held == b"finish me"
    await stopping
    await channel.close()


async def test_nothing_listening_is_unavailable_at_once(socket_path: str, kind: str) -> None:
    channel = open_channel("unix", socket_path + ".none", kind=kind)
    with pytest.raises(RpcError) as failed:
        await channel.unary(ECHO, b"", T)
    assert failed.value.code == "UNAVAILABLE"
    assert "cannot connect to the engine" in str(failed.value)


async def test_a_peer_that_is_not_http2_times_out_with_a_clear_error(
    socket_path: str, kind: str
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_unix_server(silent, socket_path)
    try:
        channel = open_channel("unix", socket_path, kind=kind, connect_timeout=0.5)
        with pytest.raises(RpcError) as failed:
            await channel.unary(ECHO, b"", T)
        assert failed.value.code in ("UNAVAILABLE", "INTERNAL")
        await channel.close()
    finally:
        server.close()
        await server.wait_closed()
