"""The HTTP/2 unary client's frame handling, fed bytes directly (no server)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from hpack import Encoder

from workflow_eventbus.plugin.callbacks import h2
from workflow_eventbus.plugin.callbacks import h2wire as w
from workflow_eventbus.plugin.callbacks.h2 import Connection, RpcError
from workflow_eventbus.plugin.callbacks.h2wire import frame

TIMEOUT = 5.0  # seconds: the deadline of the calls below (none should reach it)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def start_call(
    connection: Connection, body: bytes, timeout: float = TIMEOUT
) -> asyncio.Future[bytes]:
    """A call on a fed connection, as UnaryChannel makes it."""
    deadline = asyncio.get_running_loop().time() + timeout
    return asyncio.ensure_future(connection.unary("/s/M", body, timeout, deadline))


def connected() -> tuple[Connection, FakeTransport]:
    connection = Connection("localhost")
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(frame(w.SETTINGS, 0, 0))
    return connection, transport


def _as_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers]


async def test_header_blocks_decode_in_step_with_the_servers_table() -> None:
    # A server indexes what it sends (content-type, grpc-status, custom values)
    # and later refers to its table; evictions follow a table-size change.
    connection, _ = connected()
    encoder = Encoder()
    # ("x", "b") added in front makes index 62 name it: the same bytes that named
    # ("x", "a") a block earlier must now decode differently.
    blocks: list[list[tuple[str, str]]] = [[("x", "a")], [("x", "a")], [("x", "b")], [("x", "b")]]
    for i in range(40):
        blocks.append([(":status", "200"), ("content-type", "application/grpc")])
        blocks.append([("grpc-status", "0"), ("x-call", str(i % 7))])
        if i == 20:
            encoder.header_table_size = 128  # the next block carries a size update and evicts
    for headers in blocks:
        assert connection._blocks_in.read(encoder.encode(headers)).headers == _as_bytes(headers)


async def test_a_frame_beyond_our_max_size_fails_the_connection() -> None:
    connection, transport = connected()
    call = start_call(connection, b"x")
    await asyncio.sleep(0)
    header = struct.pack(">I", w.MAX_FRAME + 1)[1:] + struct.pack(">BBI", w.DATA, 0, 1)
    connection.data_received(header)
    with pytest.raises(RpcError) as failed:
        await call
    assert failed.value.code == "INTERNAL"
    assert transport.closed


async def test_a_trailers_only_answer_is_the_status_it_names() -> None:
    connection, _ = connected()
    call = start_call(connection, b"x")
    await asyncio.sleep(0)
    block = Encoder().encode(
        [(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no%20such%20workflow")]
    )
    connection.data_received(frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, 1, block))
    with pytest.raises(RpcError) as failed:
        await call
    assert (failed.value.code, failed.value.details) == ("NOT_FOUND", "no such workflow")
    assert connection.idle


async def test_calls_started_together_share_one_write() -> None:
    connection, transport = connected()
    await asyncio.sleep(0)  # our SETTINGS ACK goes out
    transport.written.clear()
    calls: list[Any] = [start_call(connection, b"x") for _ in range(8)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(transport.written) == 1
    connection.close()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_a_reset_stops_a_body_waiting_for_window_space() -> None:
    connection, transport = connected()
    call = start_call(connection, b"x" * 200_000)  # > 65,535 window
    await asyncio.sleep(0)
    connection.data_received(frame(w.RST_STREAM, 0, 1, struct.pack(">I", 0x2)))
    async with asyncio.timeout(1):
        with pytest.raises(RpcError) as failed:
            await call
    assert failed.value.code == "INTERNAL"
    await asyncio.sleep(0)
    sent = b"".join(transport.written)
    assert len(sent) < 70_000  # the window's worth, nothing after the reset


def _answer(connection: Connection, stream_id: int, message: bytes) -> None:
    encoder = Encoder()
    body = b"\x00" + struct.pack(">I", len(message)) + message
    connection.data_received(
        frame(w.HEADERS, w.END_HEADERS, stream_id, encoder.encode([(":status", "200")]))
        + frame(w.DATA, 0, stream_id, body)
        + frame(
            w.HEADERS,
            w.END_HEADERS | w.END_STREAM,
            stream_id,
            encoder.encode([("grpc-status", "0")]),
        )
    )


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(1):
        while not predicate():
            await asyncio.sleep(0)


async def _call_on_channel() -> tuple[Connection, asyncio.Future[bytes]]:
    """A channel's call on a fed connection, once the call's stream (id 1) is open."""
    connection, _ = connected()
    channel = h2.UnaryChannel("unix", "/nonexistent")
    channel._connection = connection
    call = asyncio.ensure_future(channel.unary("/s/M", b"x", TIMEOUT))
    await _until(lambda: 1 in connection._streams)
    return connection, call


def _reset(connection: Connection, stream_id: int, code: int) -> None:
    connection.data_received(frame(w.RST_STREAM, 0, stream_id, struct.pack(">I", code)))


async def test_a_refused_call_is_sent_again_on_the_channel() -> None:
    connection, call = await _call_on_channel()
    _reset(connection, 1, w.REFUSED_STREAM)
    await _until(lambda: 3 in connection._streams)  # the same call on a new stream
    _answer(connection, 3, b"done")
    assert await call == b"done"


async def test_a_call_the_server_saw_is_not_sent_again() -> None:
    connection, call = await _call_on_channel()
    _reset(connection, 1, 0x2)  # INTERNAL_ERROR: the server had the call
    with pytest.raises(RpcError) as failed:
        await call
    assert (failed.value.code, failed.value.unprocessed) == ("INTERNAL", False)
    assert connection._next_id == 3  # no second stream was opened


async def test_an_answer_arriving_byte_by_byte_is_the_same_answer() -> None:
    connection, _ = connected()
    calls = [start_call(connection, b"x") for _ in range(2)]
    await _until(lambda: len(connection._streams) == 2)
    whole = FakeTransport()
    spare = Connection("localhost")  # records what _answer would feed, to split it up
    spare.data_received = whole.write  # type: ignore[method-assign]
    _answer(spare, 1, b"first" * 1000)
    _answer(spare, 3, b"second")
    for byte in b"".join(whole.written):
        connection.data_received(bytes([byte]))
    assert await calls[0] == b"first" * 1000
    assert await calls[1] == b"second"


async def test_an_http_error_status_names_the_grpc_code() -> None:
    connection, _ = connected()
    call = start_call(connection, b"x")
    await _until(lambda: 1 in connection._streams)
    block = Encoder().encode([(":status", "503")])
    connection.data_received(frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, 1, block))
    with pytest.raises(RpcError) as failed:
        await call
    assert (failed.value.code, failed.value.details) == (
        "UNAVAILABLE",
        "the engine answered HTTP 503",
    )
