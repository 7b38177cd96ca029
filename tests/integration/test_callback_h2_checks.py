"""The HTTP/2 client's range checks of what the engine sends, against the strict peer.

The peer writes frames h2 would never build (bad SETTINGS, WINDOW_UPDATE of 0,
windows past 2^31-1). A connection error must reach the peer as a GOAWAY with
the right code and fail the open calls at once; a stream error resets only
that stream. The client then carries on (a new connection, or the same one).
"""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from strict_peer import (
    ECHO,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HOLD,
    PROTOCOL_ERROR,
    SETTINGS,
    WINDOW_UPDATE,
    StrictPeer,
    T,
    raw_frame,
    running_peer,
    until,
)

from workflow_eventbus.plugin.callbacks.errors import RpcError
from workflow_eventbus.plugin.callbacks.h2 import UnaryChannel

ACK = 0x1
ENABLE_PUSH, INITIAL_WINDOW, MAX_FRAME = 0x2, 0x4, 0x5
MAX_WINDOW = 2**31 - 1


def setting(key: int, value: int) -> bytes:
    return struct.pack(">HI", key, value)


@pytest.fixture(params=["tcp", "unix"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def held_call(
    where: str,
) -> AsyncIterator[tuple[StrictPeer, UnaryChannel, asyncio.Task[bytes]]]:
    """A peer, our channel to it and one call the peer holds unanswered."""
    with tempfile.TemporaryDirectory(prefix="wfeb-h2-") as directory:
        async with running_peer(where, directory) as (peer, network, address):
            channel = UnaryChannel(network, address)
            peer.release.clear()
            held = asyncio.create_task(channel.unary(HOLD, b"held", T))
            try:
                await until(lambda: peer.held == 1)
                yield peer, channel, held
            finally:
                held.cancel()
                await asyncio.gather(held, return_exceptions=True)
                peer.release.set()
                await channel.close()
        assert peer.violations == []


async def failed(call: asyncio.Task[bytes]) -> RpcError:
    """The error ``call`` ends with, promptly."""
    async with asyncio.timeout(2):
        with pytest.raises(RpcError) as error:
            await call
    return error.value


BAD_SETTINGS = {
    "initial window above 2^31-1": (0, setting(INITIAL_WINDOW, 2**31), FLOW_CONTROL_ERROR),
    "max frame below 16384": (0, setting(MAX_FRAME, 16383), PROTOCOL_ERROR),
    "max frame above 2^24-1": (0, setting(MAX_FRAME, 2**24), PROTOCOL_ERROR),
    "enable push 2": (0, setting(ENABLE_PUSH, 2), PROTOCOL_ERROR),
    "enable push 1 from a server": (0, setting(ENABLE_PUSH, 1), PROTOCOL_ERROR),
    "length not a multiple of 6": (0, setting(MAX_FRAME, 16384) + b"\x00", FRAME_SIZE_ERROR),
    "an ACK with a payload": (ACK, setting(MAX_FRAME, 16384), FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize(("flags", "payload", "code"), BAD_SETTINGS.values(), ids=BAD_SETTINGS)
async def test_bad_settings_end_the_connection_with_goaway(
    held_call: tuple[StrictPeer, UnaryChannel, asyncio.Task[bytes]],
    flags: int,
    payload: bytes,
    code: int,
) -> None:
    peer, channel, held = held_call
    peer.inject(raw_frame(SETTINGS, flags, 0, payload))
    error = await failed(held)
    assert error.code == "INTERNAL"
    assert "the engine broke HTTP/2" in error.details
    await until(lambda: peer.goaways == [code])  # our GOAWAY named the error
    assert await channel.unary(ECHO, b"after", T) == b"after"  # on a new connection
    assert len(peer.connections) == 2


CONNECTION_WINDOW_ERRORS = {
    "increment 0": (0, PROTOCOL_ERROR),
    "window above 2^31-1": (MAX_WINDOW, FLOW_CONTROL_ERROR),
}


@pytest.mark.parametrize(
    ("increment", "code"), CONNECTION_WINDOW_ERRORS.values(), ids=CONNECTION_WINDOW_ERRORS
)
async def test_a_bad_connection_window_update_ends_the_connection(
    held_call: tuple[StrictPeer, UnaryChannel, asyncio.Task[bytes]], increment: int, code: int
) -> None:
    peer, channel, held = held_call
    peer.inject(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", increment)))
    assert (await failed(held)).code == "INTERNAL"
    await until(lambda: peer.goaways == [code])
    assert await channel.unary(ECHO, b"after", T) == b"after"


@pytest.mark.parametrize(
    ("increment", "code"), CONNECTION_WINDOW_ERRORS.values(), ids=CONNECTION_WINDOW_ERRORS
)
async def test_a_bad_stream_window_update_resets_only_that_stream(
    held_call: tuple[StrictPeer, UnaryChannel, asyncio.Task[bytes]], increment: int, code: int
) -> None:
    peer, channel, held = held_call
    stream_id = peer.calls[0].stream_id
    peer.inject(raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment)))
    assert (await failed(held)).code == "INTERNAL"
    await until(lambda: (stream_id, code) in peer.resets)
    assert await channel.unary(ECHO, b"after", T) == b"after"
    assert len(peer.connections) == 1  # the connection carried on
    assert peer.goaways == []


async def test_a_window_that_a_settings_change_overflows_ends_the_connection(
    held_call: tuple[StrictPeer, UnaryChannel, asyncio.Task[bytes]],
) -> None:
    # The held stream's window is 65,535 less what its request took; raising it by
    # 2^31-1 first, then growing the initial window, takes it past the maximum.
    peer, _, held = held_call
    stream_id = peer.calls[0].stream_id
    peer.inject(
        raw_frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", MAX_WINDOW - 65535))
        + raw_frame(SETTINGS, 0, 0, setting(INITIAL_WINDOW, 2**20))
    )
    assert (await failed(held)).code == "INTERNAL"
    await until(lambda: peer.goaways == [FLOW_CONTROL_ERROR])
