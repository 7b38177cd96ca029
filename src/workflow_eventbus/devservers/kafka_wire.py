"""Just enough of the Kafka wire protocol to ask a broker for metadata and a group
coordinator.

The dev server (:mod:`.kafka`) checks readiness and finds partition leaders with
Metadata requests (v4, the newest non-flexible version; Kafka 4.x serves 0-13)
and FindCoordinator (v1; 0-6 served) on a node's plaintext internal listener, so
it needs no Kafka client library and works the same whichever client the
provider uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field

_METADATA = 3
_METADATA_VERSION = 4
_FIND_COORDINATOR = 10
_FIND_COORDINATOR_VERSION = 1
_CLIENT_ID = b"eventbus-devserver"


@dataclass(frozen=True)
class PartitionInfo:
    leader: int  # node id, -1 while none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error: int = 0


@dataclass(frozen=True)
class Metadata:
    brokers: dict[int, tuple[str, int]]  # node id -> advertised (host, port)
    controller: int
    topics: dict[str, dict[int, PartitionInfo]] = field(default_factory=dict)
    topic_errors: dict[str, int] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str | None:
        size = self.take(">h")
        if size < 0:
            return None
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.decode()

    def ints(self) -> tuple[int, ...]:
        return tuple(self.take(">i") for _ in range(max(self.take(">i"), 0)))


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">h", len(raw)) + raw


def encode_request(api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    """A request with header v1 (non-flexible) and its size prefix."""
    header = struct.pack(">hhi", api_key, version, correlation_id) + _string(_CLIENT_ID)
    message = header + body
    return struct.pack(">i", len(message)) + message


def metadata_body(topics: list[str] | None) -> bytes:
    body = struct.pack(">i", -1) if topics is None else struct.pack(">i", len(topics))
    for name in topics or ():
        body += _string(name)
    return body + b"\x00"  # allow_auto_topic_creation: false


def decode_response(payload: bytes) -> Metadata:
    """A Metadata v4 response without its size prefix and correlation id."""
    r = _Reader(payload)
    r.take(">i")  # throttle_time_ms
    brokers: dict[int, tuple[str, int]] = {}
    for _ in range(r.take(">i")):
        node = r.take(">i")
        host = r.string() or ""
        port = r.take(">i")
        r.string()  # rack
        brokers[node] = (host, port)
    r.string()  # cluster id
    controller = r.take(">i")
    topics: dict[str, dict[int, PartitionInfo]] = {}
    errors: dict[str, int] = {}
    for _ in range(r.take(">i")):
        error = r.take(">h")
        name = r.string() or ""
        r.take(">b")  # is_internal
        parts: dict[int, PartitionInfo] = {}
        for _ in range(r.take(">i")):
            p_error = r.take(">h")
            index = r.take(">i")
            leader = r.take(">i")
            parts[index] = PartitionInfo(leader, r.ints(), r.ints(), p_error)
        topics[name] = parts
        if error:
            errors[name] = error
    return Metadata(brokers, controller, topics, errors)


async def _call(port: int, request: bytes, host: str, timeout: float) -> bytes:
    """Send one request, return the response after its correlation id."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(request)
        await writer.drain()
        size = struct.unpack(">i", await asyncio.wait_for(reader.readexactly(4), timeout))[0]
        data = await asyncio.wait_for(reader.readexactly(size), timeout)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionResetError("broker closed the connection") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return data[4:]


async def fetch_metadata(
    port: int, topics: list[str] | None = None, *, host: str = "127.0.0.1", timeout: float = 2.0
) -> Metadata:
    """One Metadata request to ``host:port`` (a PLAINTEXT listener); OSError/TimeoutError
    while the broker does not answer."""
    request = encode_request(_METADATA, _METADATA_VERSION, 1, metadata_body(topics))
    return decode_response(await _call(port, request, host, timeout))


async def find_group_coordinator(
    port: int, group: str, *, host: str = "127.0.0.1", timeout: float = 2.0
) -> int:
    """The node coordinating consumer group ``group``; while there is none yet, the
    negated error code (the first ask makes the broker create ``__consumer_offsets``)."""
    body = _string(group) + b"\x00"  # key type 0: a consumer group
    request = encode_request(_FIND_COORDINATOR, _FIND_COORDINATOR_VERSION, 2, body)
    r = _Reader(await _call(port, request, host, timeout))
    r.take(">i")  # throttle_time_ms
    error = r.take(">h")
    r.string()  # error message
    node = r.take(">i")
    return node if error == 0 else -error
