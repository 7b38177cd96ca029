"""A lean gRPC unary client over HTTP/2, for the engine's callback service.

Every message a trigger delivers is one ``TriggerWorkflow`` call to the engine.
Through ``grpc.aio`` such a call costs the plugin about 130-280 us of CPU (the
C core, its poller thread and the asyncio bridge); this client speaks the few
parts of HTTP/2 a unary call needs on an asyncio protocol and costs a third of
that, with half the latency. It is a client of one peer kind, a gRPC server,
and keeps to RFC 9113 where that peer can tell:

- the request header block is constant per deadline (literals without indexing,
  so the peer's decoder table never changes) and carries ``grpc-timeout``;
- every call has a deadline: one timer per connection is armed for the earliest
  open deadline; when it fires, the late calls fail with DEADLINE_EXCEEDED and
  their streams are reset (CANCEL) while the connection carries on;
- flow control both ways: our windows are opened to the maximum once and
  topped up as data is consumed; request bodies are cut to the peer's frame
  size and wait for its windows (``SETTINGS_INITIAL_WINDOW_SIZE`` changes
  apply to open streams);
- the peer's SETTINGS and WINDOW_UPDATEs are range-checked (§6.5.2, §6.9), as
  are frame sizes, padding and the stream a frame names: a violation on a
  call's stream resets that stream, any other is a connection error: GOAWAY
  with its code, every open call fails at once;
- ``SETTINGS_MAX_CONCURRENT_STREAMS`` is honoured (callers queue for a slot);
- PING is answered, GOAWAY drains (streams above its last id fail as
  UNAVAILABLE, never processed; new calls open a new connection), RST_STREAM
  fails its call, a cancelled call resets its stream, a lost connection fails
  every open call with UNAVAILABLE and the next call reconnects.

Response header blocks are decoded in order by ``hpack`` (its public
``Decoder.decode`` only), so the connection's table stays in step even for
abandoned streams. A server repeats the same few blocks for every call, and
decoding one costs about 4 us (two per call; a dictionary hit costs 0.03 us,
measured on this machine class with hpack 4.2), so a block is remembered with
what it said as long as the dynamic table has not changed since: the table
changes only through a block holding an indexing literal or a size update,
which :func:`~.h2wire.changes_table` reads off the block's own bytes; such a
block clears what was remembered and is not remembered itself.

Failures are :class:`RpcError` with the gRPC status code name and details.
"""

from __future__ import annotations

import asyncio

from .errors import RpcError
from .h2conn import Connection

__all__ = ["RESENDS", "Connection", "RpcError", "UnaryChannel"]

RESENDS = 8  # sends of a call the server never processed (see RpcError.unprocessed)


class UnaryChannel:
    """Unary calls to one gRPC server, over one connection made on first use.

    ``network`` is ``unix`` (``address`` a socket path) or ``tcp``
    (``host:port``). A lost or draining connection is replaced by the next
    call; a call the server never saw (see :class:`RpcError`) is sent again, up to
    ``RESENDS`` times, within its deadline.
    """

    def __init__(self, network: str, address: str, *, connect_timeout: float = 5.0) -> None:
        self.network = network
        self.address = address
        self.connect_timeout = connect_timeout
        self._connection: Connection | None = None
        self._all: set[Connection] = set()  # draining ones finish their calls, then close
        self._lock = asyncio.Lock()
        self._closed = False

    async def unary(self, method: str, request: bytes, timeout: float) -> bytes:
        """Call ``method`` (``/package.Service/Method``) with the serialized
        ``request``; the answer's bytes, or :class:`RpcError` (``DEADLINE_EXCEEDED``
        once ``timeout`` seconds have passed)."""
        if timeout <= 0:
            raise RpcError("DEADLINE_EXCEEDED", f"the call's deadline ({timeout:g}s) had passed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        connection = self._connection
        if connection is None or not connection.usable:
            connection = await self._usable(deadline)
        for attempt in range(1, RESENDS + 1):
            try:
                return await connection.unary(method, request, timeout, deadline)
            except RpcError as exc:
                if not exc.unprocessed or attempt == RESENDS:
                    raise
            await asyncio.sleep(0.001 * (attempt - 1))  # refused: the peer is at its limit
            timeout = deadline - loop.time()
            if timeout <= 0:
                raise RpcError(
                    "DEADLINE_EXCEEDED", "the deadline passed while the call was being resent"
                )
            connection = await self._usable(deadline)
        raise AssertionError("unreachable")

    async def _usable(self, deadline: float) -> Connection:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        async with self._lock:
            if self._closed:
                raise RpcError("UNAVAILABLE", "the callback channel was closed")
            connection = self._connection
            if connection is None or not connection.usable:
                self._all = {c for c in self._all if c.closed is None}
                connection = self._connection = await self._dial(deadline)
                self._all.add(connection)
            return connection

    async def _dial(self, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        limit = max(min(self.connect_timeout, deadline - loop.time()), 0.0)
        protocol: Connection | None = None
        try:
            async with asyncio.timeout(limit):
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
        except asyncio.CancelledError:
            if protocol is not None:
                protocol.close()  # cancelled mid-dial: no socket outlives the call
            raise
        except (OSError, TimeoutError) as exc:
            if protocol is not None:
                protocol.close()
            why = "no HTTP/2 SETTINGS" if protocol is not None else exc
            raise RpcError(
                "UNAVAILABLE",
                f"cannot connect to the engine at {self.address} within "
                f"{limit:g}s: {why or type(exc).__name__}",
            ) from exc
        return protocol

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            for connection in self._all:
                connection.close()
            self._all.clear()
            self._connection = None
