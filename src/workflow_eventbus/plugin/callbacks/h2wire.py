"""HTTP/2 and gRPC wire facts for the unary client: frame types, flags, settings,
error codes, frame heads, the request header block, the ``grpc-timeout`` text, what a
response block says and whether a block changes the HPACK dynamic table."""

from __future__ import annotations

import math
import struct
from typing import NamedTuple
from urllib.parse import unquote

import grpc
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from .errors import RpcError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME = 0x2, 0x3, 0x4, 0x5
MAX_WINDOW = 2**31 - 1  # the largest flow-control window (RFC 9113 §6.9.1)
INITIAL_WINDOW = 65535  # every window's size before SETTINGS says otherwise (RFC 9113 §6.9.2)
MAX_FRAME = 1 << 20  # the largest frame we accept (our SETTINGS_MAX_FRAME_SIZE)
FRAME_SIZE_RANGE = (16384, 2**24 - 1)  # allowed SETTINGS_MAX_FRAME_SIZE values (§6.5.2)
LAST_STREAM_ID = 2**31 - 1
# Error codes of RST_STREAM and GOAWAY (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
H2_ERRORS = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
    0x4: "SETTINGS_TIMEOUT", 0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM", 0xC: "INADEQUATE_SECURITY", 0xD: "HTTP_1_1_REQUIRED",
}  # fmt: skip
GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
# The status of a call the server reset, as gRPC's HTTP/2 mapping gives it (the rest
# are INTERNAL); REFUSED_STREAM also means the server never processed the call.
RESET_TO_GRPC = {REFUSED_STREAM: "UNAVAILABLE", CANCEL: "CANCELLED",
                 0xB: "RESOURCE_EXHAUSTED", 0xC: "PERMISSION_DENIED"}  # fmt: skip

FRAME_HEAD = struct.Struct(">BHBBI")  # 24-bit length, type, flags, stream id
# A DATA frame's head and the gRPC message prefix (compressed flag, length), for a
# body that fits one frame and the windows: one pack per request.
SMALL_BODY = 0xFFFF  # the frame length's high byte is 0
DATA_HEAD = struct.Struct(">xHBBIBI")


def frame_head(size: int, kind: int, flags: int, stream: int) -> bytes:
    return FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return frame_head(len(payload), kind, flags, stream) + payload


def request_headers(path: str, authority: str, timeout: float) -> bytes:
    """The header block of a gRPC unary request to ``path`` with ``timeout`` seconds
    left: never-indexed literals, so encoding it leaves no state in the peer's
    decoder table, and the same bytes for every call with the same deadline."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", grpc_timeout(timeout)),
    ]
    return Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in fields], huffman=False)


# grpc-timeout units, finest first, with how many of each make a second
_TIMEOUT_UNITS = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600))
_TIMEOUT_DIGITS = 99_999_999  # the gRPC spec allows at most 8 digits


def grpc_timeout(seconds: float) -> str:
    """``seconds`` as a ``grpc-timeout`` value: counted in the finest unit whose count
    has at most 8 digits, rounded up to it (30 s is ``30000000u``, 300 s ``300000m``)."""
    for unit, per_second in _TIMEOUT_UNITS:
        count = math.ceil(seconds * per_second)
        if count <= _TIMEOUT_DIGITS:
            return f"{max(count, 1)}{unit}"
    return f"{_TIMEOUT_DIGITS}H"


def changes_table(block: bytes) -> bool:
    """Whether decoding ``block`` changes the HPACK dynamic table (RFC 7541 §6).

    Two representations do: a literal with incremental indexing (``01`` prefix) and
    a dynamic table size update (``001``). Indexed fields (``1``) and literals
    without indexing or never indexed (``0000``, ``0001``) leave it as it was. Only
    the lengths are read, no string is decoded; a block cut short counts as
    changing (it is never remembered)."""
    pos, end = 0, len(block)
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field: a 7-bit prefix integer
                pos = _skip_integer(block, pos, 0x7F)
            elif first & 0xE0:  # 01xxxxxx or 001xxxxx
                return True
            else:  # a literal that is not indexed: name index (0 = a name string), value
                named = first & 0x0F == 0
                pos = _skip_integer(block, pos, 0x0F)
                if named:
                    pos = _skip_string(block, pos)
                pos = _skip_string(block, pos)
    except IndexError:
        return True
    return pos != end


def _integer(block: bytes, pos: int, mask: int) -> tuple[int, int]:
    """An HPACK integer with a ``mask``-wide prefix at ``pos``: its value, the next byte."""
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _skip_integer(block: bytes, pos: int, mask: int) -> int:
    return _integer(block, pos, mask)[1]


def _skip_string(block: bytes, pos: int) -> int:
    length, pos = _integer(block, pos, 0x7F)  # the top bit is the Huffman flag
    if pos + length > len(block):
        raise IndexError("string beyond the block")
    return pos + length


class Block(NamedTuple):
    """A decoded header block and what it says about its call."""

    headers: list[tuple[bytes, bytes]]
    http_error: tuple[str, str] | None  # a :status other than 200: (gRPC code, message)
    grpc_status: str | None  # the first grpc-status (counts in trailers only)
    grpc_message: str | None  # the last grpc-message, unquoted (likewise)


def outcome(status: str | None, message: str, body: bytearray) -> RpcError | None:
    """The error a finished call ends with, or None when ``body`` is one good message."""
    if status is None:
        return RpcError("INTERNAL", "the engine ended the call without a grpc-status")
    if status != "OK":
        return RpcError(status, message)
    if len(body) < 5:
        return RpcError("INTERNAL", "the engine answered OK without a message")
    if body[0] != 0:
        return RpcError("INTERNAL", "the engine sent a compressed message (none was offered)")
    if int.from_bytes(body[1:5], "big") != len(body) - 5:
        return RpcError("INTERNAL", "the engine's answer is not exactly one message")
    return None


def read_block(headers: list[tuple[bytes, bytes]]) -> Block:
    http_error: tuple[str, str] | None = None
    grpc_status: str | None = None
    grpc_message: str | None = None
    for name, value in headers:
        if name == b":status" and value != b"200":
            http = value.decode(errors="replace")
            http_error = (HTTP_TO_GRPC.get(http, "UNKNOWN"), f"the engine answered HTTP {http}")
        elif name == b"grpc-status" and grpc_status is None:
            grpc_status = GRPC_CODES.get(int(value), "UNKNOWN") if value.isdigit() else "UNKNOWN"
        elif name == b"grpc-message":
            grpc_message = unquote(value.decode(errors="replace"))
    return Block(headers, http_error, grpc_status, grpc_message)


class BlockReader:
    """The response header blocks of one connection, decoded in order (which keeps
    hpack's table in step), with a memory of the ones decoded since the table last
    changed: the engine repeats the same few blocks, and a hit costs far less than a
    decode (h2.py's notes)."""

    def __init__(self, remembered: int) -> None:
        self._decoder = Decoder()
        self._decoded: dict[bytes, Block] = {}
        self._remembered = remembered

    def read(self, block: bytes) -> Block:
        said = self._decoded.get(block)
        if said is None:
            said = read_block(
                [(bytes(n), bytes(v)) for n, v in self._decoder.decode(block, raw=True)]
            )
            if changes_table(block):
                self._decoded.clear()
            elif len(self._decoded) < self._remembered:
                self._decoded[block] = said
        return said


HTTP_TO_GRPC = {"400": "INTERNAL", "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED",
                "404": "UNIMPLEMENTED", "429": "UNAVAILABLE", "502": "UNAVAILABLE",
                "503": "UNAVAILABLE", "504": "UNAVAILABLE"}  # fmt: skip


class PeerProtocolError(Exception):
    """The engine broke HTTP/2 in a way that ends the connection (RFC 9113 §5.4.1)."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{H2_ERRORS.get(code, hex(code))}: {text}")


def expect(condition: bool, code: int, text: str) -> None:
    """A check of something the peer sent: a connection error ``code`` when it fails."""
    if not condition:
        raise PeerProtocolError(code, text)


FRAME_NAMES = ("DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING",
               "GOAWAY", "WINDOW_UPDATE", "CONTINUATION")  # fmt: skip
_ON_STREAM_ZERO = frozenset((SETTINGS, PING, GOAWAY))
_ON_A_STREAM = frozenset((DATA, HEADERS, RST_STREAM, PUSH_PROMISE, CONTINUATION))
_EXACT_SIZES = {RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}  # a wrong one ends the connection


def check_frame(kind: int, stream_id: int, length: int) -> None:
    """The checks a frame of ``kind`` passes whatever the state (RFC 9113 §6): the
    stream it may name and its size. PRIORITY and unknown kinds are not checked
    (they are ignored)."""
    if kind >= len(FRAME_NAMES):
        return
    name = FRAME_NAMES[kind]
    if kind in _ON_STREAM_ZERO:
        expect(stream_id == 0, PROTOCOL_ERROR, f"a {name} frame on stream {stream_id}")
    elif kind in _ON_A_STREAM:
        expect(stream_id != 0, PROTOCOL_ERROR, f"a {name} frame on stream 0")
    size = _EXACT_SIZES.get(kind)
    if size is not None:
        expect(length == size, FRAME_SIZE_ERROR, f"a {length}-byte {name} frame (not {size})")
    elif kind == GOAWAY:
        expect(length >= 8, FRAME_SIZE_ERROR, f"a {length}-byte GOAWAY frame (8 at least)")


def read_settings(flags: int, payload: bytes) -> list[tuple[int, int]] | None:
    """The (setting, value) pairs of a server's SETTINGS frame, in order, each
    range-checked (RFC 9113 §6.5); None for an acknowledgement."""
    size = len(payload)
    if flags & ACK:
        expect(size == 0, FRAME_SIZE_ERROR, f"a SETTINGS acknowledgement carrying {size} bytes")
        return None
    expect(size % 6 == 0, FRAME_SIZE_ERROR, f"a {size}-byte SETTINGS frame (not 6 per setting)")
    pairs = [_SETTING.unpack_from(payload, offset) for offset in range(0, size, 6)]
    low, high = FRAME_SIZE_RANGE
    for key, value in pairs:
        if key == S_INITIAL_WINDOW:
            expect(
                value <= MAX_WINDOW,
                FLOW_CONTROL_ERROR,
                f"SETTINGS_INITIAL_WINDOW_SIZE {value} is above 2^31-1",
            )
        elif key == S_MAX_FRAME:
            expect(
                low <= value <= high,
                PROTOCOL_ERROR,
                f"SETTINGS_MAX_FRAME_SIZE {value} is outside {low}..{high}",
            )
        elif key == S_ENABLE_PUSH:  # RFC 9113 §6.5.2: a server may send only 0
            expect(value == 0, PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value} from a server")
    return pairs


_SETTING = struct.Struct(">HI")
