"""Small facts every development server needs: a free loopback port, whether a port
accepts connections, and stopping a child process politely, then firmly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    try:
        _reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM ``proc``, wait up to ``grace`` seconds, then SIGKILL; its exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()
