"""A lean gRPC unary client over HTTP/2, for the engine's callback service.

Every message a trigger delivers is one ``TriggerWorkflow`` call to the engine.
Through ``grpc.aio`` such a call costs the plugin about 130-280 us of CPU (the
C core, its poller thread and the asyncio bridge); this client speaks the few
parts of HTTP/2 a unary call needs on an asyncio protocol and costs a third of
that, with half the latency. It is a client of one peer kind, a gRPC server,
and keeps to RFC 9113 where that peer can tell:

- the request header block is constant (literals without indexing, so the
  peer's decoder table never changes); response blocks are decoded in order by
  ``hpack`` so the connection's table stays in step even for abandoned streams;
- flow control both ways: our windows are opened to the maximum once and
  topped up as data is consumed; request bodies are cut to the peer's frame
  size and wait for its windows (``SETTINGS_INITIAL_WINDOW_SIZE`` changes
  apply to open streams);
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` is honoured (callers queue for a slot);
- PING is answered, GOAWAY drains (streams above its last id fail as
  UNAVAILABLE, never processed; new calls open a new connection), RST_STREAM
  fails its call, a cancelled call resets its stream, a lost connection fails
  every open call with UNAVAILABLE and the next call reconnects.

Failures are :class:`RpcError` with the gRPC status code name and details.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import cast

from hpack import Decoder
from hpack.exceptions import HPACKError

from ...core.errors import ProviderError
from .h2wire import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    DATA_HEAD,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FRAME_HEAD,
    GOAWAY,
    H2_ERRORS,
    HEADERS,
    LAST_STREAM_ID,
    MAX_FRAME,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW,
    S_MAX_CONCURRENT,
    S_MAX_FRAME,
    SETTINGS,
    SMALL_BODY,
    WINDOW_UPDATE,
    Block,
    frame,
    frame_head,
    read_block,
    request_headers,
)

REFILL_AT = 2**30  # top our windows up once this much was received
MAX_RESPONSE = 2**30  # bytes; a larger answer fails the connection
RESENDS = 8  # sends of a call the server never processed (see RpcError.unprocessed)


class RpcError(ProviderError):
    """A unary call failed: ``code`` is the gRPC status name, ``details`` its message.

    ``unprocessed`` means the server never saw the call (refused stream, above a
    GOAWAY's last id, connection draining before it was sent): safe to send again."""

    def __init__(self, code: str, details: str, *, unprocessed: bool = False) -> None:
        self.code = code
        self.details = details
        self.unprocessed = unprocessed
        super().__init__(f"{code}: {details}")


class _Stream:
    __slots__ = ("body", "done", "headers", "message", "status", "window")

    def __init__(self, window: int, done: asyncio.Future[bytes]) -> None:
        self.done = done
        self.body = bytearray()
        self.window = window
        self.headers = False  # the response headers arrived (the next block is trailers)
        self.status: str | None = None
        self.message = ""


class Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary calls; made by :class:`UnaryChannel`."""

    def __init__(self, authority: str) -> None:
        self._authority = authority
        self._blocks: dict[str, bytes] = {}
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # the start of a frame that has not fully arrived
        self._need = 9  # bytes the buffer must hold before it is parsed again
        self._decoder = Decoder()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._peer_window = DEFAULT_WINDOW  # peer's initial stream window
        self._peer_frame = 16384
        self._peer_streams = 2**31
        self._send_window = DEFAULT_WINDOW  # connection-level send window
        self._received = 0  # connection-level bytes received since the last top-up
        self._window_waiters: list[asyncio.Future[None]] = []
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self._loop = asyncio.get_running_loop()
        self._outbox: list[bytes] = []
        self._decoded: dict[bytes, Block] = {}
        self._table_mark: tuple[int, object] = (0, None)
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.closed: RpcError | None = None
        self.draining = False

    @property
    def usable(self) -> bool:
        return self.closed is None and not self.draining and self._next_id < LAST_STREAM_ID

    @property
    def idle(self) -> bool:
        return not self._streams

    # -- calls -------------------------------------------------------------------

    async def unary(self, path: str, request: bytes) -> bytes:
        while len(self._streams) >= self._peer_streams:
            await self._wait_slot()
        if not self.usable:
            raise RpcError("UNAVAILABLE", "connection closing", unprocessed=True)
        stream_id = self._next_id
        self._next_id += 2
        stream = self._streams[stream_id] = _Stream(self._peer_window, self._loop.create_future())
        block = self._blocks.get(path)
        if block is None:
            block = self._blocks[path] = request_headers(path, self._authority)
        size = len(request) + 5  # the gRPC message prefix: compressed flag, length
        try:
            if size <= min(self._send_window, stream.window, self._peer_frame, SMALL_BODY):
                self._send_window -= size
                stream.window -= size
                self._write(
                    b"".join(
                        (
                            frame_head(len(block), HEADERS, END_HEADERS, stream_id),
                            block,
                            DATA_HEAD.pack(size, DATA, END_STREAM, stream_id, 0, len(request)),
                            request,
                        )
                    )
                )
            else:
                body = b"\x00" + struct.pack(">I", len(request)) + request
                await self._send_paced(stream_id, stream, block, body)
            return await stream.done
        except asyncio.CancelledError:
            if self._streams.pop(stream_id, None) is not None:
                self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))
                self._release_slot()
            raise

    async def _send_paced(self, stream_id: int, stream: _Stream, block: bytes, body: bytes) -> None:
        """A body larger than a frame or than the windows: frame by frame as they open."""
        size = len(body)
        self._write(frame(HEADERS, END_HEADERS, stream_id, block))
        view, sent = memoryview(body), 0
        while sent < size and not stream.done.done():  # the server may answer (or reset) early
            room = min(self._send_window, stream.window, self._peer_frame, size - sent)
            if room <= 0:
                await self._wait_window()
                continue
            self._send_window -= room
            stream.window -= room
            end = END_STREAM if sent + room == size else 0
            self._write(frame(DATA, end, stream_id, bytes(view[sent : sent + room])))
            sent += room

    def _write(self, data: bytes) -> None:
        """Queue frames; calls started in one loop iteration share one socket write."""
        if self.closed is None:
            if not self._outbox:
                self._loop.call_soon(self._flush)
            self._outbox.append(data)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox and self._transport is not None and self.closed is None:
            self._transport.write(b"".join(outbox))

    def _hang_up(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    async def _wait_window(self) -> None:
        waiter = self._loop.create_future()
        self._window_waiters.append(waiter)
        await waiter

    def _wake_window(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_slot(self) -> None:
        waiter = self._loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _finish(self, stream_id: int, error: RpcError | None = None) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._release_slot()
        if self._window_waiters:
            self._wake_window()  # a body waiting for window space stops sending
        if self.draining and not self._streams:
            self._hang_up()  # a drained connection is done
        if stream.done.done():
            return
        if error is None:
            error = _outcome(stream)
        if error is None:
            stream.done.set_result(bytes(memoryview(stream.body)[5:]))
        else:
            stream.done.set_exception(error)

    def fail(self, error: RpcError) -> None:
        """Fail every open call and refuse new ones."""
        if self.closed is None:
            self.closed = error
        for stream_id in list(self._streams):
            self._finish(stream_id, error)
        self._wake_window()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)
        if not self.ready.done():
            self.ready.set_exception(error)

    def close(self) -> None:
        self._abort(RpcError("UNAVAILABLE", "the callback channel was closed"))

    def _abort(self, error: RpcError) -> None:
        self.fail(error)
        if self._transport is not None:
            self._transport.close()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        settings = struct.pack(
            ">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW, MAX_WINDOW, S_MAX_FRAME, MAX_FRAME
        )
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self.fail(RpcError("UNAVAILABLE", f"connection to the engine lost{reason}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return  # a large frame still arriving: parse it once it is complete
            data = bytes(buffer)
            buffer.clear()
        pos, end = 0, len(data)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = FRAME_HEAD.unpack_from(data, pos)
                length = high << 16 | low
                if length > MAX_FRAME:
                    raise ValueError(f"a {length}-byte frame exceeds our SETTINGS_MAX_FRAME_SIZE")
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = data[pos + 9 : stop]
                pos = stop
                stream_id &= LAST_STREAM_ID
                if self._header_block is not None:
                    self._on_frame(kind, flags, stream_id, payload)
                elif kind == DATA:  # the two kinds of every call, without the dispatch
                    self._on_data(flags, stream_id, payload)
                elif (
                    kind == HEADERS
                    and flags & (END_HEADERS | PADDED | PRIORITY_FLAG) == END_HEADERS
                ):
                    self._on_header_block(flags, stream_id, payload)
                else:
                    self._on_frame(kind, flags, stream_id, payload)
        except (HPACKError, ValueError, struct.error) as exc:
            self._abort(RpcError("INTERNAL", f"undecodable frame from the engine: {exc!r}"))
            return
        if pos < end:
            buffer += memoryview(data)[pos:]
            self._need = 9 + int.from_bytes(data[pos : pos + 3], "big") if end - pos >= 9 else 9

    # -- frames ------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise ValueError("header block interrupted before END_HEADERS")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            self._on_settings(flags, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            (code,) = struct.unpack(">I", payload[:4])
            name = H2_ERRORS.get(code, hex(code))
            refused = code == REFUSED_STREAM
            grpc_code = "UNAVAILABLE" if refused else "CANCELLED" if code == CANCEL else "INTERNAL"
            error = RpcError(grpc_code, f"stream reset by the engine: {name}", unprocessed=refused)
            self._finish(stream_id, error)
        elif kind == GOAWAY:
            self._on_goaway(payload)
        # PRIORITY, PUSH_PROMISE (disabled by our settings) and unknown types: ignored

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)  # padding included, as flow control counts it
        if self._received >= REFILL_AT:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        stream.body += payload
        if len(stream.body) >= MAX_RESPONSE:
            self._abort(RpcError("INTERNAL", "the engine's answer is larger than 1 GiB"))
            return
        if flags & END_STREAM:
            self._finish(stream_id)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        start = 0
        if flags & PADDED:
            start, payload = 1, payload[: len(payload) - payload[0]]
        if flags & PRIORITY_FLAG:
            start += 5
        fragment = bytearray(payload[start:])
        if flags & END_HEADERS:
            self._on_header_block(flags, stream_id, bytes(fragment))
        else:
            self._header_block = (stream_id, flags, fragment)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise ValueError("CONTINUATION without its HEADERS")
        block_stream, block_flags, fragment = self._header_block
        fragment += payload
        if flags & END_HEADERS:
            self._header_block = None
            self._on_header_block(block_flags, block_stream, bytes(fragment))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        said = self._decode(block)
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        trailers = stream.headers or bool(flags & END_STREAM)
        stream.headers = True
        if said.http_error is not None:
            stream.status, stream.message = said.http_error
        if trailers:
            if said.grpc_status is not None and stream.status is None:
                stream.status = said.grpc_status
            if said.grpc_message is not None:
                stream.message = said.grpc_message
        if flags & END_STREAM:
            self._finish(stream_id)

    def _decode(self, block: bytes) -> Block:
        """Decode every block in order (keeps the table in step), remembering the ones that
        left the dynamic table as it was: a server repeats those for every call."""
        # The table's state: new entries go in front, evictions shorten it (hpack 4.x).
        entries = self._decoder.header_table.dynamic_entries
        mark = (len(entries), entries[0] if entries else None)
        if mark[0] != self._table_mark[0] or mark[1] is not self._table_mark[1]:
            self._decoded.clear()
            self._table_mark = mark
        said = self._decoded.get(block)
        if said is None:
            said = read_block(
                [(bytes(n), bytes(v)) for n, v in self._decoder.decode(block, raw=True)]
            )
            entries = self._decoder.header_table.dynamic_entries
            unchanged = len(entries) == mark[0] and (entries[0] if entries else None) is mark[1]
            if unchanged and len(self._decoded) < 64:
                self._decoded[block] = said
        return said

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        for offset in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == S_INITIAL_WINDOW:
                delta, self._peer_window = value - self._peer_window, value
                for stream in self._streams.values():
                    stream.window += delta
            elif key == S_MAX_FRAME:
                self._peer_frame = value
            elif key == S_MAX_CONCURRENT:
                self._peer_streams = value
        self._write(frame(SETTINGS, ACK, 0))
        self._wake_window()
        self._release_slot()
        if not self.ready.done():
            self.ready.set_result(None)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        (increment,) = struct.unpack(">I", payload[:4])
        increment &= MAX_WINDOW
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.window += increment
        self._wake_window()

    def _on_goaway(self, payload: bytes) -> None:
        last, code = struct.unpack(">II", payload[:8])
        last &= LAST_STREAM_ID
        self.draining = True
        debug = payload[8:].decode(errors="replace")
        text = f"the engine is going away ({H2_ERRORS.get(code, hex(code))} {debug})".strip()
        unprocessed = RpcError(
            "UNAVAILABLE", f"{text}; the call was not processed", unprocessed=True
        )
        for stream_id in [s for s in self._streams if s > last]:
            self._finish(stream_id, unprocessed)
        if code != 0:
            self.fail(RpcError("UNAVAILABLE", text))
        elif self.idle:
            self._hang_up()


def _outcome(stream: _Stream) -> RpcError | None:
    """The error a finished stream ends with, or None when it carries one good message."""
    if stream.status is None:
        return RpcError("INTERNAL", "the engine ended the call without a grpc-status")
    if stream.status != "OK":
        return RpcError(stream.status, stream.message)
    body = stream.body
    if len(body) < 5:
        return RpcError("INTERNAL", "the engine answered OK without a message")
    if body[0] != 0:
        return RpcError("INTERNAL", "the engine sent a compressed message (none was offered)")
    if int.from_bytes(body[1:5], "big") != len(body) - 5:
        return RpcError("INTERNAL", "the engine's answer is not exactly one message")
    return None


class UnaryChannel:
    """Unary calls to one gRPC server, over one connection made on first use.

    ``network`` is ``unix`` (``address`` a socket path) or ``tcp``
    (``host:port``). A lost or draining connection is replaced by the next
    call; a call the server never saw (see :class:`RpcError`) is sent again, up to
    ``RESENDS`` times.
    """

    def __init__(self, network: str, address: str, *, connect_timeout: float = 5.0) -> None:
        self.network = network
        self.address = address
        self.connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._all: set[Connection] = set()  # draining ones finish their calls, then close
        self._lock = asyncio.Lock()
        self._closed = False

    async def call(self, path: str, request: bytes) -> bytes:
        connection = self._connection
        if connection is None or not connection.usable:
            connection = await self._usable()
        for attempt in range(1, RESENDS + 1):
            try:
                return await connection.unary(path, request)
            except RpcError as exc:
                if not exc.unprocessed or attempt == RESENDS:
                    raise
            await asyncio.sleep(0.001 * (attempt - 1))  # refused: the peer is at its limit
            connection = await self._usable()
        raise AssertionError("unreachable")

    async def _usable(self) -> Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        async with self._lock:
            if self._closed:
                raise RpcError("UNAVAILABLE", "the callback channel was closed")
            connection = self._connection
            if connection is None or not connection.usable:
                self._all = {c for c in self._all if c.closed is None}
                connection = self._connection = await self._dial()
                self._all.add(connection)
            return connection

    async def _dial(self) -> Connection:
        loop = asyncio.get_running_loop()
        protocol: Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.network == "unix":
                    _, protocol = await loop.create_unix_connection(
                        lambda: Connection("localhost"), self.address
                    )
                else:
                    host, _, port = self.address.rpartition(":")
                    _, protocol = await loop.create_connection(
                        lambda: Connection(self.address), host.strip("[]"), int(port)
                    )
                await protocol.ready  # the peer's SETTINGS (stream limit, windows) come first
        except (OSError, TimeoutError) as exc:
            if protocol is not None:
                protocol.close()
            why = "no HTTP/2 SETTINGS" if protocol is not None else exc
            raise RpcError(
                "UNAVAILABLE",
                f"cannot connect to the engine at {self.address} within "
                f"{self.connect_timeout:g}s: {why or type(exc).__name__}",
            ) from exc
        return protocol

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            for connection in self._all:
                connection.close()
            self._all.clear()
            self._connection = None
