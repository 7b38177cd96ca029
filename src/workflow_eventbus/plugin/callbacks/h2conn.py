"""One HTTP/2 connection carrying gRPC unary calls: the protocol under
:class:`~.h2.UnaryChannel` (see that module for what it keeps to and why).

It parses frames from the socket's bytes, checks what the peer sends (sizes,
streams, settings ranges, window arithmetic; RFC 9113 §5.4, §6), runs the
deadline timer and the flow-control accounting, and ends calls or itself.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections import deque
from typing import cast

from hpack.exceptions import HPACKError

from .errors import RpcError
from .h2wire import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DATA_HEAD,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_SIZE_ERROR,
    GOAWAY,
    H2_ERRORS,
    HEADERS,
    INITIAL_WINDOW,
    LAST_STREAM_ID,
    MAX_FRAME,
    MAX_WINDOW,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RESET_TO_GRPC,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW,
    S_MAX_CONCURRENT,
    S_MAX_FRAME,
    SETTINGS,
    SMALL_BODY,
    WINDOW_UPDATE,
    BlockReader,
    PeerProtocolError,
    check_frame,
    expect,
    frame,
    frame_head,
    outcome,
    read_settings,
    request_headers,
)

REFILL_AT = 2**30  # top our windows up once this much was received
MAX_RESPONSE = 2**30  # bytes; a larger answer resets its call
TIMER_SLACK = 0.001  # seconds; a deadline this close when the timer fires has passed
REMEMBERED_BLOCKS = 64  # decoded response header blocks kept per connection
GOAWAY_DEBUG = 256  # bytes of our reason sent in a GOAWAY's debug data


class _Stream:
    __slots__ = (
        "body", "deadline", "done", "headers", "message", "reset", "status", "timeout", "window"
    )  # fmt: skip

    def __init__(
        self, window: int, done: asyncio.Future[bytes], deadline: float, timeout: float
    ) -> None:
        self.done = done
        self.body = bytearray()
        self.window = window
        self.deadline = deadline  # loop time
        self.timeout = timeout  # seconds the request's grpc-timeout gave
        self.headers = False  # the response headers arrived (the next block is trailers)
        self.reset = False  # ended by a RST_STREAM, ours or the engine's
        self.status: str | None = None
        self.message = ""


class Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying unary calls; made by :class:`UnaryChannel`."""

    def __init__(self, authority: str) -> None:
        self._authority = authority
        self._blocks: dict[str, tuple[float, bytes]] = {}  # path: (timeout, header block)
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # the start of a frame that has not fully arrived
        self._need = 9  # bytes the buffer must hold before it is parsed again
        self._blocks_in = BlockReader(REMEMBERED_BLOCKS)  # response header blocks
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._peer_window = INITIAL_WINDOW  # peer's initial stream window
        self._peer_frame = 16384
        self._peer_streams = 2**31
        self._send_window = INITIAL_WINDOW  # connection-level send window
        self._received = 0  # connection-level bytes received since the last top-up
        self._window_waiters: list[asyncio.Future[None]] = []
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, fragments
        self._loop = asyncio.get_running_loop()
        self._outbox: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the deadline timer fires (loop time)
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

    async def unary(self, path: str, request: bytes, timeout: float, deadline: float) -> bytes:
        """One call: ``timeout`` (seconds) goes out as its ``grpc-timeout``; at
        ``deadline`` (loop time) it fails here whatever the engine does. Time spent
        queued for a stream is not taken off the header (the block stays the cached
        one); the local deadline is the true one."""
        if len(self._streams) >= self._peer_streams:
            await self._wait_for_slot(deadline)
        if not self.usable:
            raise RpcError("UNAVAILABLE", "connection closing", unprocessed=True)
        stream_id = self._next_id
        self._next_id += 2
        stream = self._streams[stream_id] = _Stream(
            self._peer_window, self._loop.create_future(), deadline, timeout
        )
        if deadline < self._timer_at:
            self._arm(deadline)
        cached = self._blocks.get(path)
        if cached is None or cached[0] != timeout:
            cached = self._blocks[path] = (timeout, request_headers(path, self._authority, timeout))
        block = cached[1]
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

    async def _wait_for_slot(self, deadline: float) -> None:
        """Queue for one of the peer's streams until ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                while len(self._streams) >= self._peer_streams and self.closed is None:
                    await self._wait_slot()
        except TimeoutError:
            raise RpcError(
                "DEADLINE_EXCEEDED",
                f"the deadline passed while the call waited for a stream (the engine allows "
                f"{self._peer_streams} at a time)",
            ) from None

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
        if sent < size and not stream.reset:  # answered early: close our half too
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))

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

    # -- deadlines ---------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """The timer fired: fail the calls whose deadline passed, re-arm for the next."""
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time() + TIMER_SLACK
        late = [i for i, s in self._streams.items() if s.deadline <= now]
        for stream_id in late:
            stream = self._streams[stream_id]
            error = RpcError(
                "DEADLINE_EXCEEDED", f"no answer from the engine within {stream.timeout:g}s"
            )
            self._reset(stream_id, CANCEL, error)
        if self._streams and self.closed is None:
            self._arm(min(s.deadline for s in self._streams.values()))

    # -- ending calls and the connection -----------------------------------------

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
            error = outcome(stream.status, stream.message, stream.body)
        if error is None:
            stream.done.set_result(bytes(memoryview(stream.body)[5:]))
        else:
            stream.done.set_exception(error)

    def _reset(self, stream_id: int, code: int, error: RpcError) -> None:
        """End one open call with ``error`` and tell the engine (RST_STREAM ``code``)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.reset = True
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", code)))
            self._finish(stream_id, error)

    def fail(self, error: RpcError) -> None:
        """Fail every open call and refuse new ones."""
        if self.closed is None:
            self.closed = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
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

    def _connection_error(self, code: int, text: str) -> None:
        """End the connection for the engine's protocol error: GOAWAY with ``code`` and
        the reason (we accepted no stream of its, so last stream id 0), then fail
        every open call."""
        if self.closed is None and self._transport is not None:
            self._flush()
            reason = text.encode()[:GOAWAY_DEBUG]
            self._transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, code) + reason))
        name = H2_ERRORS.get(code, hex(code))
        self._abort(RpcError("INTERNAL", f"the engine broke HTTP/2 ({name}): {text}"))

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        settings = struct.pack(
            ">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW, MAX_WINDOW, S_MAX_FRAME, MAX_FRAME
        )
        transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - INITIAL_WINDOW))
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
                    raise PeerProtocolError(
                        FRAME_SIZE_ERROR,
                        f"a {length}-byte frame exceeds our SETTINGS_MAX_FRAME_SIZE {MAX_FRAME}",
                    )
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
        except PeerProtocolError as exc:
            self._connection_error(exc.code, exc.text)
            return
        except HPACKError as exc:
            self._connection_error(COMPRESSION_ERROR, f"undecodable header block: {exc!r}")
            return
        if pos < end:
            buffer += memoryview(data)[pos:]
            self._need = 9 + int.from_bytes(data[pos : pos + 3], "big") if end - pos >= 9 else 9

    # -- frames ------------------------------------------------------------------

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise PeerProtocolError(PROTOCOL_ERROR, "a header block interrupted by another frame")
        if not self.ready.done() and kind != SETTINGS:
            raise PeerProtocolError(PROTOCOL_ERROR, "the engine's first frame is not SETTINGS")
        check_frame(kind, stream_id, len(payload))
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
            self._on_reset(stream_id, payload)
        elif kind == GOAWAY:
            self._on_goaway(payload)
        elif kind == PUSH_PROMISE:
            raise PeerProtocolError(
                PROTOCOL_ERROR, "a PUSH_PROMISE, though our SETTINGS_ENABLE_PUSH is 0"
            )
        # PRIORITY and unknown types: ignored

    def _unknown_stream(self, stream_id: int, what: str) -> None:
        """A frame for no open call: fine on a stream that closed (a late answer to a
        call we reset), a connection error on stream 0 or one we never opened."""
        if stream_id == 0 or stream_id % 2 == 0 or stream_id >= self._next_id:
            raise PeerProtocolError(
                PROTOCOL_ERROR, f"{what} on stream {stream_id}, which the plugin never opened"
            )

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)  # padding included, as flow control counts it
        if self._received >= REFILL_AT:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
            self._received = 0
        stream = self._streams.get(stream_id)
        if stream is None:
            self._unknown_stream(stream_id, "DATA")
            return
        if flags & PADDED:
            expect(
                bool(payload) and payload[0] < len(payload),
                PROTOCOL_ERROR,
                f"a DATA frame on stream {stream_id} with more padding than payload",
            )
            payload = payload[1 : len(payload) - payload[0]]
        stream.body += payload
        if len(stream.body) >= MAX_RESPONSE:
            error = RpcError("RESOURCE_EXHAUSTED", "the engine's answer is larger than 1 GiB")
            self._reset(stream_id, CANCEL, error)
            return
        if flags & END_STREAM:
            self._finish(stream_id)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        start, stop = 0, len(payload)
        if flags & PADDED:
            expect(bool(payload), PROTOCOL_ERROR, "a PADDED HEADERS frame without a pad length")
            start, stop = 1, len(payload) - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        expect(
            start <= stop,
            PROTOCOL_ERROR,
            f"a HEADERS frame on stream {stream_id} whose padding and priority exceed it",
        )
        fragment = bytearray(payload[start:stop])
        if flags & END_HEADERS:
            self._on_header_block(flags, stream_id, bytes(fragment))
        else:
            self._header_block = (stream_id, flags, fragment)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise PeerProtocolError(PROTOCOL_ERROR, "a CONTINUATION without its HEADERS")
        block_stream, block_flags, fragment = self._header_block
        fragment += payload
        if flags & END_HEADERS:
            self._header_block = None
            self._on_header_block(block_flags, block_stream, bytes(fragment))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        said = self._blocks_in.read(block)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._unknown_stream(stream_id, "HEADERS")
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

    def _on_settings(self, flags: int, payload: bytes) -> None:
        """Apply the peer's settings in order (range-checked by ``read_settings``)."""
        pairs = read_settings(flags, payload)
        if pairs is None:
            return  # our SETTINGS were acknowledged
        for key, value in pairs:
            if key == S_INITIAL_WINDOW:
                delta, self._peer_window = value - self._peer_window, value
                for open_id, stream in self._streams.items():
                    stream.window += delta
                    expect(
                        stream.window <= MAX_WINDOW,
                        FLOW_CONTROL_ERROR,
                        f"SETTINGS_INITIAL_WINDOW_SIZE {value} takes stream {open_id}'s "
                        "window above 2^31-1",
                    )
            elif key == S_MAX_FRAME:
                self._peer_frame = value
            elif key == S_MAX_CONCURRENT:
                self._peer_streams = value
            # the rest (HEADER_TABLE_SIZE: we never index; MAX_HEADER_LIST_SIZE: our
            # block is small; unknown ones) changes nothing here
        self._write(frame(SETTINGS, ACK, 0))
        self._wake_window()
        self._release_slot()
        if not self.ready.done():
            self.ready.set_result(None)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        """More send window (RFC 9113 §6.9): increment 0 and a window above 2^31-1 are
        errors of the stream they name, or of the connection for stream 0."""
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if stream_id == 0:
            expect(increment > 0, PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self._send_window += increment
            expect(
                self._send_window <= MAX_WINDOW,
                FLOW_CONTROL_ERROR,
                f"a WINDOW_UPDATE of {increment} takes the connection's window above 2^31-1",
            )
        elif (stream := self._streams.get(stream_id)) is None:
            self._unknown_stream(stream_id, "WINDOW_UPDATE")
            return
        elif increment == 0:
            error = RpcError(
                "INTERNAL", "the engine sent a WINDOW_UPDATE of 0 for the call (PROTOCOL_ERROR)"
            )
            self._reset(stream_id, PROTOCOL_ERROR, error)
            return
        elif stream.window + increment > MAX_WINDOW:
            error = RpcError(
                "INTERNAL",
                f"the engine's WINDOW_UPDATE of {increment} takes the call's window above "
                "2^31-1 (FLOW_CONTROL_ERROR)",
            )
            self._reset(stream_id, FLOW_CONTROL_ERROR, error)
            return
        else:
            stream.window += increment
        self._wake_window()

    def _on_reset(self, stream_id: int, payload: bytes) -> None:
        if stream_id not in self._streams:
            self._unknown_stream(stream_id, "RST_STREAM")
            return
        code = int.from_bytes(payload, "big")
        name = H2_ERRORS.get(code, hex(code))
        refused = code == REFUSED_STREAM
        grpc_code = RESET_TO_GRPC.get(code, "INTERNAL")
        error = RpcError(grpc_code, f"stream reset by the engine: {name}", unprocessed=refused)
        self._streams[stream_id].reset = True
        self._finish(stream_id, error)

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
