"""The HTTP/2 client's deadlines, range checks and header-block memory, fed bytes
directly (no socket), and the callback transport settings."""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow_eventbus.core.defaults import DEFAULT_CALLBACK_TIMEOUT
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.plugin.broker import ConnInfoStore
from workflow_eventbus.plugin.callbacks import h2wire as w
from workflow_eventbus.plugin.callbacks.client import CallbackClient
from workflow_eventbus.plugin.callbacks.errors import RpcError
from workflow_eventbus.plugin.callbacks.grpcaio import GrpcChannel
from workflow_eventbus.plugin.callbacks.h2 import Connection, UnaryChannel
from workflow_eventbus.plugin.callbacks.h2wire import changes_table, frame, grpc_timeout
from workflow_eventbus.plugin.callbacks.transport import (
    TIMEOUT_ENV,
    TRANSPORT_ENV,
    callback_timeout,
    open_channel,
    transport_kind,
)

TIMEOUT = 5.0


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """What was written after the preface: (type, flags, stream, payload)."""
        data = b"".join(self.written)[len(w.PREFACE) :]
        out = []
        while data:
            high, low, kind, flags, stream = w.FRAME_HEAD.unpack_from(data)
            end = 9 + (high << 16 | low)
            out.append((kind, flags, stream, data[9:end]))
            data = data[end:]
        return out

    def goaway_code(self) -> int | None:
        codes = [struct.unpack(">II", p[:8])[1] for k, _, _, p in self.frames() if k == w.GOAWAY]
        return codes[-1] if codes else None

    def resets(self) -> list[tuple[int, int]]:
        return [(s, int.from_bytes(p, "big")) for k, _, s, p in self.frames() if k == w.RST_STREAM]


def connected(settings: bytes = b"") -> tuple[Connection, FakeTransport]:
    connection = Connection("localhost")
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(frame(w.SETTINGS, 0, 0, settings))
    return connection, transport


def start_call(connection: Connection, timeout: float = TIMEOUT) -> asyncio.Future[bytes]:
    deadline = asyncio.get_running_loop().time() + timeout
    return asyncio.ensure_future(connection.unary("/s/M", b"x", timeout, deadline))


async def until(predicate: Any) -> None:
    async with asyncio.timeout(2):
        while not predicate():
            await asyncio.sleep(0)


def answer(stream_id: int, message: bytes) -> bytes:
    encoder = Encoder()
    return (
        frame(w.HEADERS, w.END_HEADERS, stream_id, encoder.encode([(":status", "200")]))
        + frame(w.DATA, 0, stream_id, b"\x00" + struct.pack(">I", len(message)) + message)
        + frame(
            w.HEADERS,
            w.END_HEADERS | w.END_STREAM,
            stream_id,
            encoder.encode([("grpc-status", "0")]),
        )
    )


# -- deadlines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300.0, "300000m"), (30.0, "30000000u"), (0.5, "500000u"), (0.05, "50000000n"),
     (1e-12, "1n"), (86400.0, "86400000m"), (1e9, "16666667M"), (1e13, "99999999H")],
)  # fmt: skip
def test_grpc_timeout_is_at_most_8_digits_and_never_short(seconds: float, text: str) -> None:
    assert grpc_timeout(seconds) == text
    units = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    assert len(text) <= 9
    if seconds < 1e13:
        assert int(text[:-1]) * units[text[-1]] >= seconds * (1 - 1e-12)


async def test_a_late_call_is_reset_and_the_connection_goes_on() -> None:
    connection, transport = connected()
    late = start_call(connection, 0.05)
    other = start_call(connection)
    await until(lambda: len(connection._streams) == 2)
    with pytest.raises(RpcError) as expired:
        await late
    assert expired.value.code == "DEADLINE_EXCEEDED"
    assert "0.05s" in expired.value.details
    await asyncio.sleep(0)  # the reset is flushed
    assert transport.resets() == [(1, w.CANCEL)]
    connection.data_received(answer(1, b"too late") + answer(3, b"in time"))  # 1: ignored
    assert await other == b"in time"
    assert connection.closed is None and connection.usable


async def test_deadlines_fire_in_their_own_order() -> None:
    connection, _ = connected()
    loop = asyncio.get_running_loop()
    started = loop.time()
    calls = [start_call(connection, t) for t in (0.15, 0.05, 0.1)]
    ended = []
    for call in asyncio.as_completed(calls):
        with pytest.raises(RpcError):
            await call
        ended.append(round(loop.time() - started, 2))
    assert ended == sorted(ended) and ended[0] >= 0.05 and ended[-1] < 0.5


async def test_a_call_queued_for_a_stream_fails_at_its_deadline_unsent() -> None:
    connection, transport = connected(struct.pack(">HI", w.S_MAX_CONCURRENT, 1))
    first = start_call(connection)
    queued = start_call(connection, 0.05)
    with pytest.raises(RpcError) as expired:
        await queued
    assert expired.value.code == "DEADLINE_EXCEEDED"
    assert [s for k, _, s, _ in transport.frames() if k == w.HEADERS] == [1]
    connection.close()
    with pytest.raises(RpcError):
        await first


async def test_the_request_carries_grpc_timeout() -> None:
    connection, transport = connected()
    call = start_call(connection, 12.5)
    await until(lambda: any(k == w.HEADERS for k, *_ in transport.frames()))
    block = next(p for k, _, _, p in transport.frames() if k == w.HEADERS)
    assert ("grpc-timeout", "12500000u") in Decoder().decode(block)
    connection.close()
    with pytest.raises(RpcError):
        await call


async def test_a_spent_deadline_fails_before_anything_is_sent() -> None:
    for channel in (UnaryChannel("unix", "/nonexistent"), GrpcChannel("unix", "/nonexistent")):
        with pytest.raises(RpcError) as spent:
            await channel.unary("/s/M", b"", 0)
        assert spent.value.code == "DEADLINE_EXCEEDED"
        await channel.close()


# -- range checks -------------------------------------------------------------------

SETTING = struct.Struct(">HI").pack
CONNECTION_ERRORS = {
    "settings: initial window": (w.SETTINGS, 0, 0, SETTING(w.S_INITIAL_WINDOW, 2**31), 3),
    "settings: max frame low": (w.SETTINGS, 0, 0, SETTING(w.S_MAX_FRAME, 16383), 1),
    "settings: max frame high": (w.SETTINGS, 0, 0, SETTING(w.S_MAX_FRAME, 2**24), 1),
    "settings: enable push": (w.SETTINGS, 0, 0, SETTING(w.S_ENABLE_PUSH, 1), 1),
    "settings: length": (w.SETTINGS, 0, 0, b"\x00" * 7, 6),
    "settings: ack with payload": (w.SETTINGS, w.ACK, 0, SETTING(w.S_MAX_FRAME, 16384), 6),
    "settings: on a stream": (w.SETTINGS, 0, 1, b"", 1),
    "window update: 0 on the connection": (w.WINDOW_UPDATE, 0, 0, b"\x00" * 4, 1),
    "window update: connection overflow": (w.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff", 3),
    "window update: length": (w.WINDOW_UPDATE, 0, 0, b"\x00" * 5, 6),
    "ping: length": (w.PING, 0, 0, b"\x00" * 7, 6),
    "ping: on a stream": (w.PING, 0, 1, b"\x00" * 8, 1),
    "rst_stream: length": (w.RST_STREAM, 0, 1, b"\x00" * 3, 6),
    "rst_stream: stream 0": (w.RST_STREAM, 0, 0, b"\x00" * 4, 1),
    "rst_stream: idle stream": (w.RST_STREAM, 0, 9, b"\x00" * 4, 1),
    "goaway: length": (w.GOAWAY, 0, 0, b"\x00" * 7, 6),
    "goaway: on a stream": (w.GOAWAY, 0, 1, b"\x00" * 8, 1),
    "data: stream 0": (w.DATA, 0, 0, b"x", 1),
    "data: idle stream": (w.DATA, 0, 7, b"x", 1),
    "data: padding beyond the frame": (w.DATA, w.PADDED, 1, b"\x05abc", 1),
    "headers: a server-opened stream": (w.HEADERS, w.END_HEADERS, 2, b"\x88", 1),
    "headers: padding beyond the frame": (w.HEADERS, w.PADDED | w.END_HEADERS, 1, b"\x09\x88", 1),
    "headers: undecodable block": (w.HEADERS, w.END_HEADERS, 1, b"\xff\xff\xff\xff\xff", 9),
    "continuation: without headers": (w.CONTINUATION, w.END_HEADERS, 1, b"\x88", 1),
    "push_promise": (w.PUSH_PROMISE, w.END_HEADERS, 1, b"\x00\x00\x00\x02\x88", 1),
}


@pytest.mark.parametrize(
    ("kind", "flags", "stream", "payload", "code"),
    CONNECTION_ERRORS.values(),
    ids=CONNECTION_ERRORS,
)
async def test_a_connection_error_sends_goaway_and_fails_every_call(
    kind: int, flags: int, stream: int, payload: bytes, code: int
) -> None:
    connection, transport = connected()
    calls = [start_call(connection) for _ in range(3)]
    await until(lambda: len(connection._streams) == 3)
    connection.data_received(frame(kind, flags, stream, payload))
    for call in calls:
        with pytest.raises(RpcError) as failed:
            await call  # at once: no deadline involved
        assert failed.value.code == "INTERNAL"
        assert w.H2_ERRORS[code] in failed.value.details
    assert transport.goaway_code() == code
    assert transport.closed and not connection.usable


async def test_a_header_block_interrupted_is_a_connection_error() -> None:
    connection, transport = connected()
    call = start_call(connection)
    await until(lambda: connection._streams)
    connection.data_received(frame(w.HEADERS, 0, 1, b"\x88") + frame(w.PING, 0, 0, b"\x00" * 8))
    with pytest.raises(RpcError):
        await call
    assert transport.goaway_code() == w.PROTOCOL_ERROR


async def test_the_first_frame_must_be_settings() -> None:
    connection = Connection("localhost")
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.data_received(frame(w.PING, 0, 0, b"\x00" * 8))
    with pytest.raises(RpcError, match="first frame"):
        await connection.ready
    assert transport.goaway_code() == w.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("increment", "code"), [(0, w.PROTOCOL_ERROR), (2**31 - 1, w.FLOW_CONTROL_ERROR)]
)
async def test_a_bad_stream_window_update_resets_that_stream_only(
    increment: int, code: int
) -> None:
    connection, transport = connected()
    bad, good = start_call(connection), start_call(connection)
    await until(lambda: len(connection._streams) == 2)
    connection.data_received(frame(w.WINDOW_UPDATE, 0, 1, struct.pack(">I", increment)))
    with pytest.raises(RpcError) as failed:
        await bad
    assert failed.value.code == "INTERNAL"
    await asyncio.sleep(0)
    assert transport.resets() == [(1, code)]
    connection.data_received(answer(3, b"fine"))
    assert await good == b"fine"
    assert transport.goaway_code() is None and connection.usable


async def test_a_settings_change_past_a_streams_window_is_a_connection_error() -> None:
    connection, transport = connected()
    call = start_call(connection)
    await until(lambda: connection._streams)
    connection.data_received(
        frame(w.WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1 - 65535))
        + frame(w.SETTINGS, 0, 0, SETTING(w.S_INITIAL_WINDOW, 2**20))
    )
    with pytest.raises(RpcError):
        await call
    assert transport.goaway_code() == w.FLOW_CONTROL_ERROR


async def test_valid_settings_extremes_are_applied() -> None:
    connection, _ = connected(
        SETTING(w.S_INITIAL_WINDOW, 2**31 - 1)
        + SETTING(w.S_MAX_FRAME, 2**24 - 1)
        + SETTING(w.S_ENABLE_PUSH, 0)
        + SETTING(0x99, 12345)  # unknown: ignored
    )
    assert connection.closed is None
    assert (connection._peer_window, connection._peer_frame) == (2**31 - 1, 2**24 - 1)


# -- header blocks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "changes"),
    [
        (b"\x88", False),  # indexed :status 200
        (b"\x88\xbe", False),  # and a dynamic-table reference
        (b"\x0f\x10\x03abc", False),  # literal without indexing, indexed name 31
        (b"\x00\x01x\x01y", False),  # literal without indexing, new name
        (b"\x10\x01x\x81\xff", False),  # never indexed, Huffman-flagged value
        (b"\x88\x40\x01x\x01y", True),  # literal with incremental indexing
        (b"\x3f\xe1\x1f\x88", True),  # a dynamic table size update
        (b"\x00\x01x\x05y", True),  # cut short: never remembered
    ],
)
def test_changes_table_reads_the_representations(block: bytes, changes: bool) -> None:
    assert changes_table(block) is changes


# A small vocabulary, so the same bytes come back meaning different fields once the
# table has changed (index 62 is whatever was added last).
headers = st.lists(
    st.tuples(
        st.sampled_from(["grpc-status", "grpc-message", "x-a", "x-b", ":status"]),
        st.sampled_from(["0", "5", "a" * 40, "200"]),
        st.booleans(),  # sensitive: never indexed
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(headers, st.booleans(), st.sampled_from([None] * 8 + [0, 64, 256, 4096])),
        max_size=40,
    )
)
def test_remembered_blocks_decode_as_a_fresh_decoder_does(blocks: list[Any]) -> None:
    # A server's encoder indexing, evicting and resizing at will: every block must
    # mean what it means to a plain decoder that has seen the same blocks.
    async def run() -> None:
        connection, _ = connected()
        encoder, reference = Encoder(), Decoder()
        for fields, huffman, resize in blocks:
            if resize is not None:
                encoder.header_table_size = resize
            block = encoder.encode(
                [NeverIndexedHeaderTuple(n, v) if s else HeaderTuple(n, v) for n, v, s in fields],
                huffman=huffman,
            )
            for _ in range(2):  # the second time may come from memory
                decoded = connection._blocks_in.read(block).headers
                expected = reference.decode(block, raw=True)
                assert decoded == [(bytes(n), bytes(v)) for n, v in expected]
                if changes_table(block):
                    break  # the encoder would not send the same bytes again

    asyncio.run(run())


# -- settings of the transport ---------------------------------------------------------


async def test_the_transport_comes_from_the_environment() -> None:
    assert transport_kind({}) == "h2"
    assert transport_kind({TRANSPORT_ENV: " grpc "}) == "grpc"
    with pytest.raises(ConfigError) as bad:
        transport_kind({TRANSPORT_ENV: "quic"})
    text = str(bad.value)
    assert TRANSPORT_ENV in text and "'quic'" in text and "h2, grpc" in text
    for environ, implementation in (({TRANSPORT_ENV: "grpc"}, GrpcChannel), ({}, UnaryChannel)):
        channel = open_channel("unix", "/x", environ=environ)
        assert isinstance(channel, implementation)
        await channel.close()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("", DEFAULT_CALLBACK_TIMEOUT), ("30s", 30.0), ("500ms", 0.5), ("10m", 600.0), ("45", 45.0)],
)
def test_the_deadline_comes_from_the_environment(text: str, seconds: float) -> None:
    assert callback_timeout({TIMEOUT_ENV: text}) == seconds


@pytest.mark.parametrize("text", ["0", "-1s", "soon", "0s", "inf"])
def test_a_bad_deadline_names_the_setting_and_the_value(text: str) -> None:
    with pytest.raises(ConfigError) as bad:
        callback_timeout({TIMEOUT_ENV: text})
    assert TIMEOUT_ENV in str(bad.value) and repr(text) in str(bad.value)


def test_the_callback_client_checks_its_settings_at_construction() -> None:
    store = ConnInfoStore()
    client = CallbackClient(store, environ={TIMEOUT_ENV: "90s", TRANSPORT_ENV: "grpc"})
    assert (client.timeout, client.transport) == (90.0, "grpc")
    assert CallbackClient(store, timeout=2.0, transport="h2", environ={}).timeout == 2.0
    with pytest.raises(ConfigError, match=TRANSPORT_ENV):
        CallbackClient(store, environ={TRANSPORT_ENV: "tcp"})
    with pytest.raises(ConfigError, match="timeout"):
        CallbackClient(store, timeout=math.nan, environ={})
