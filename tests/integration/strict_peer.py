"""A strict engine for the callback client's tests: EngineCallbackService over h2.

The server side of each connection is an ``h2.connection.H2Connection``
(``client_side=False``, inbound and outbound header validation on), which raises
``ProtocolError`` on anything our client does against RFC 9113: frames on the
wrong stream, flow-control overruns, too many streams, bad header blocks. On
top of it the peer checks what gRPC asks of a request (method, scheme, path,
content-type, te, the ``grpc-timeout`` text, one uncompressed message). Every
breach is kept in ``violations``; the connection that saw it is ended with
GOAWAY. A test asserts the list is empty when it is done.

It serves the EngineCallbackService methods (TriggerWorkflow through the
``pipeline`` the test sets, Log) plus two raw-bytes methods for transport tests
(``Echo``; ``Hold``, which answers once ``release`` is set). It can also misbehave
on purpose: refuse or reset calls, go away, and send frames that h2 itself would
never send (:meth:`StrictPeer.inject`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.settings import SettingCodes

from workflow_eventbus._proto import plugin_pb2 as ppb

SERVICE = ppb.DESCRIPTOR.services_by_name["EngineCallbackService"].full_name
TRIGGER, LOG = f"/{SERVICE}/TriggerWorkflow", f"/{SERVICE}/Log"
ECHO, HOLD = "/test.Strict/Echo", "/test.Strict/Hold"
GRPC_TIMEOUT = re.compile(rb"\d{1,8}[HMSmun]")
TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

# HTTP/2 frame types and error codes, for frames built by hand
SETTINGS, GOAWAY, WINDOW_UPDATE = 0x4, 0x7, 0x8
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x6, 0x7, 0x8
T = 10.0  # seconds: the deadline of test calls that should never reach it
GOAWAY_PING = b"goaway!!"  # the PING that follows our GOAWAY: its ACK means it was read


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.002)


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame as bytes, whatever it says (h2 refuses to build bad ones)."""
    size = len(payload)
    return struct.pack(">BHBBI", size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


@dataclass
class Call:
    """One request as the peer received it."""

    method: str
    stream_id: int
    headers: dict[bytes, bytes]
    timeout: float | None  # seconds from grpc-timeout
    body: bytearray = field(default_factory=bytearray)


class Violation(Exception):
    """The client broke gRPC's rules for a request."""


async def _no_error(request: ppb.TriggerWorkflowRequest) -> str:
    return ""


class StrictPeer:
    """The engine side; ``listen_tcp``/``listen_unix`` give the address to dial."""

    def __init__(
        self,
        *,
        max_concurrent_streams: int = 100,
        initial_window: int = 65535,
        max_frame: int = 16384,
    ) -> None:
        self.settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            SettingCodes.MAX_FRAME_SIZE: max_frame,
        }
        self.violations: list[str] = []  # what our client did wrong
        self.goaways: list[int] = []  # error codes of the client's GOAWAY frames
        self.resets: list[tuple[int, int]] = []  # (stream id, code) of its RST_STREAMs
        self.calls: list[Call] = []
        self.triggers: list[ppb.TriggerWorkflowRequest] = []
        self.logs: list[ppb.LogRequest] = []
        self.pipeline: Callable[[ppb.TriggerWorkflowRequest], Awaitable[str]] = _no_error
        self.release = asyncio.Event()
        self.held = 0
        self.active = 0
        self.most_active = 0
        self.refuse = 0  # refuse this many of the next calls (REFUSED_STREAM, unprocessed)
        self.reset_with: int | None = None  # reset the next call with this code
        self.connections: list[PeerConnection] = []
        self._servers: list[asyncio.Server] = []

    async def listen_tcp(self) -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: PeerConnection(self), "127.0.0.1", 0)
        self._servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def listen_unix(self, path: str) -> str:
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(lambda: PeerConnection(self), path))
        return path

    @property
    def open_connections(self) -> list[PeerConnection]:
        return [c for c in self.connections if not c.lost]

    def inject(self, data: bytes) -> None:
        """Write ``data`` on every open connection, behind h2's back."""
        for connection in self.open_connections:
            connection.write_raw(data)

    def goaway(
        self, code: int = NO_ERROR, last: int | None = None, *, hang_up: bool = False
    ) -> None:
        """GOAWAY on every open connection; ``last`` defaults to the highest stream
        seen. Streams above it are dropped unanswered, as the client must assume."""
        for connection in self.open_connections:
            connection.go_away(code, last, hang_up=hang_up)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for connection in self.connections:
            connection.abort()
        for connection in self.connections:
            await connection.stopped()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def answer(self, call: Call) -> tuple[int, str, bytes]:
        """(grpc status, message, body) of a complete call."""
        message = bytes(call.body)
        if len(message) < 5 or message[0] != 0:
            raise Violation(f"{call.method}: not an uncompressed gRPC message")
        if int.from_bytes(message[1:5], "big") != len(message) - 5:
            raise Violation(f"{call.method}: the body is not exactly one message")
        request = message[5:]
        if call.method == TRIGGER:
            trigger = ppb.TriggerWorkflowRequest.FromString(request)
            self.triggers.append(trigger)
            error = await self.pipeline(trigger)
            return 0, "", ppb.ErrorResponse(error=error).SerializeToString()
        if call.method == LOG:
            self.logs.append(ppb.LogRequest.FromString(request))
            return 0, "", b""
        if call.method == ECHO:
            return 0, "", request
        if call.method == HOLD:
            self.held += 1
            await self.release.wait()
            return 0, "", request
        return 12, f"unknown method {call.method}", b""  # UNIMPLEMENTED


class PeerConnection(asyncio.Protocol):
    """One connection's server side."""

    def __init__(self, peer: StrictPeer) -> None:
        self.peer = peer
        config = h2.config.H2Configuration(
            client_side=False, validate_inbound_headers=True, validate_outbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.calls: dict[int, Call] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.window = asyncio.Event()  # set when a send window grew
        self.gone_after: int | None = None  # the last stream id of our GOAWAY
        self.goaway_seen = False  # the client has read our GOAWAY (it acked the PING after it)
        self.highest = 0
        self._closed = asyncio.Event()
        peer.connections.append(self)

    # -- asyncio ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.update_settings(dict(self.peer.settings))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for task in self.tasks.values():
            task.cancel()
        self._closed.set()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.peer.violations.append(f"HTTP/2: {type(exc).__name__}: {exc}")
            self.flush()  # h2 queued its GOAWAY
            self.abort()
            return
        for event in events:
            self.on_event(event)
        self.flush()

    # -- events -------------------------------------------------------------------

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event.stream_id, list(event.headers or []))
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if (call := self.calls.get(event.stream_id)) is not None:
                call.body += event.data or b""
        elif isinstance(event, h2.events.StreamEnded):
            if (call := self.calls.get(event.stream_id)) is not None:
                self.tasks[call.stream_id] = asyncio.create_task(self.serve(call))
        elif isinstance(event, h2.events.StreamReset):
            if not event.remote_reset:
                return
            self.peer.resets.append((event.stream_id, int(event.error_code or 0)))
            self.calls.pop(event.stream_id, None)
            if (task := self.tasks.pop(event.stream_id, None)) is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
        elif isinstance(event, h2.events.PingAckReceived):
            if event.ping_data == GOAWAY_PING:
                self.goaway_seen = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.peer.goaways.append(int(event.error_code or 0))

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.highest = max(self.highest, stream_id)
        if self.gone_after is not None and stream_id > self.gone_after:
            if self.goaway_seen:  # the client answered the PING sent after the GOAWAY
                self.peer.violations.append(f"stream {stream_id} opened after our GOAWAY")
            return  # crossed the GOAWAY on the wire: ignored, the client sends it again
        fields = dict(headers)
        try:
            timeout = check_request(fields)
        except Violation as exc:
            self.peer.violations.append(str(exc))
            self.h2.reset_stream(stream_id, PROTOCOL_ERROR)
            return
        if self.peer.refuse > 0:
            self.peer.refuse -= 1
            self.h2.reset_stream(stream_id, REFUSED_STREAM)
            return
        call = Call(fields[b":path"].decode(), stream_id, fields, timeout)
        self.calls[stream_id] = call
        self.peer.calls.append(call)

    async def serve(self, call: Call) -> None:
        peer = self.peer
        peer.active += 1
        peer.most_active = max(peer.most_active, peer.active)
        try:
            if peer.reset_with is not None:
                code, peer.reset_with = peer.reset_with, None
                self.h2.reset_stream(call.stream_id, code)
                return
            try:
                status, message, body = await peer.answer(call)
            except Violation as exc:
                peer.violations.append(str(exc))
                status, message, body = 13, str(exc), b""
            await self.respond(call.stream_id, status, message, body)
        except h2.exceptions.StreamClosedError:
            pass  # the client reset the call meanwhile
        finally:
            peer.active -= 1
            self.calls.pop(call.stream_id, None)
            self.tasks.pop(call.stream_id, None)
            self.flush()

    async def respond(self, stream_id: int, status: int, message: str, body: bytes) -> None:
        head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        trailers = [(b"grpc-status", str(status).encode())]
        if message:
            trailers.append((b"grpc-message", quote(message, safe=" ").encode()))
        if status != 0:  # trailers-only
            self.h2.send_headers(stream_id, head + trailers, end_stream=True)
            return
        self.h2.send_headers(stream_id, head)
        data = b"\x00" + struct.pack(">I", len(body)) + body
        sent = 0
        while sent < len(data):
            room = min(
                self.h2.local_flow_control_window(stream_id),
                self.h2.max_outbound_frame_size,
                len(data) - sent,
            )
            if room <= 0:
                self.flush()
                self.window.clear()
                await self.window.wait()
                continue
            self.h2.send_data(stream_id, data[sent : sent + room])
            sent += room
        self.h2.send_headers(stream_id, trailers, end_stream=True)

    # -- misbehaving --------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        self.flush()
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def go_away(self, code: int, last: int | None, *, hang_up: bool) -> None:
        last = self.highest if last is None else last
        self.gone_after = last
        for stream_id in [s for s in self.tasks if s > last]:
            self.tasks.pop(stream_id).cancel()
        for stream_id in [s for s in self.calls if s > last]:
            del self.calls[stream_id]
        self.write_raw(raw_frame(GOAWAY, 0, 0, struct.pack(">II", last, code) + b"test"))
        self.h2.ping(GOAWAY_PING)
        self.flush()
        if hang_up:
            self.abort()

    # -- plumbing -----------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lost:
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()

    async def stopped(self) -> None:
        if self.transport is not None:
            await self._closed.wait()
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_request(fields: dict[bytes, bytes]) -> float | None:
    """Check a request's headers against the gRPC HTTP/2 protocol; its timeout."""
    expected = {b":method": b"POST", b"te": b"trailers"}
    for name, value in expected.items():
        if fields.get(name) != value:
            raise Violation(f"request header {name!r} is {fields.get(name)!r}, not {value!r}")
    if fields.get(b":scheme") not in (b"http", b"https"):
        raise Violation(f"request :scheme is {fields.get(b':scheme')!r}")
    if not fields.get(b":path", b"").startswith(b"/") or not fields.get(b":authority"):
        raise Violation("request without a :path or an :authority")
    if not fields.get(b"content-type", b"").startswith(b"application/grpc"):
        raise Violation(f"request content-type is {fields.get(b'content-type')!r}")
    text = fields.get(b"grpc-timeout")
    if text is None:
        return None
    if not GRPC_TIMEOUT.fullmatch(text):
        raise Violation(f"grpc-timeout {text!r} is not 1-8 digits and a unit")
    return int(text[:-1]) * TIMEOUT_UNITS[text[-1:]]


@contextlib.asynccontextmanager
async def running_peer(where: str, directory: str, **settings: int):  # type: ignore[no-untyped-def]
    """A started peer and its (network, address); closed and checked on the way out."""
    peer = StrictPeer(**settings)
    if where == "tcp":
        network, address = "tcp", await peer.listen_tcp()
    else:
        network, address = "unix", await peer.listen_unix(f"{directory}/engine.sock")
    try:
        yield peer, network, address
    finally:
        await peer.close()
