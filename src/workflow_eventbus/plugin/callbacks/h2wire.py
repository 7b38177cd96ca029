"""HTTP/2 and gRPC wire facts for the unary client: frame types, flags, settings,
error codes, frame heads, the request header block and what a response block says."""

from __future__ import annotations

import struct
from typing import NamedTuple
from urllib.parse import unquote

import grpc
from hpack import Encoder, NeverIndexedHeaderTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_ENABLE_PUSH, S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME = 0x2, 0x3, 0x4, 0x5
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MAX_FRAME = 1 << 20  # the largest frame we accept (our SETTINGS_MAX_FRAME_SIZE)
LAST_STREAM_ID = 2**31 - 1
CANCEL, REFUSED_STREAM = 0x8, 0x7  # RST_STREAM codes
H2_ERRORS = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR", 0xB: "ENHANCE_YOUR_CALM",
}  # fmt: skip
GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}

FRAME_HEAD = struct.Struct(">BHBBI")  # 24-bit length, type, flags, stream id
# A DATA frame's head and the gRPC message prefix (compressed flag, length), for a
# body that fits one frame and the windows: one pack per request.
SMALL_BODY = 0xFFFF  # the frame length's high byte is 0
DATA_HEAD = struct.Struct(">xHBBIBI")


def frame_head(size: int, kind: int, flags: int, stream: int) -> bytes:
    return FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return frame_head(len(payload), kind, flags, stream) + payload


def request_headers(path: str, authority: str) -> bytes:
    """The constant header block of a gRPC unary request to ``path``: never-indexed
    literals, so encoding it leaves no state in the peer's decoder table."""
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return Encoder().encode([NeverIndexedHeaderTuple(n, v) for n, v in fields], huffman=False)


class Block(NamedTuple):
    """A decoded header block and what it says about its call."""

    headers: list[tuple[bytes, bytes]]
    http_error: tuple[str, str] | None  # a :status other than 200: (gRPC code, message)
    grpc_status: str | None  # the first grpc-status (counts in trailers only)
    grpc_message: str | None  # the last grpc-message, unquoted (likewise)


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


HTTP_TO_GRPC = {"400": "INTERNAL", "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED",
                "404": "UNIMPLEMENTED", "429": "UNAVAILABLE", "502": "UNAVAILABLE",
                "503": "UNAVAILABLE", "504": "UNAVAILABLE"}  # fmt: skip
