"""Both callback transports (our HTTP/2 client and grpc.aio) against a strict h2 engine.

The same tests run for each transport, over loopback TCP and a unix socket; the
peer (``strict_peer.py``) fails the test when either breaks HTTP/2 or gRPC.
What only the HTTP/2 client does (range checks of the peer's frames) is in
``test_callback_h2_checks.py``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from strict_peer import (
    CANCEL,
    ECHO,
    HOLD,
    INTERNAL_ERROR,
    LOG,
    NO_ERROR,
    TRIGGER,
    StrictPeer,
    T,
    running_peer,
    until,
)

from workflow_eventbus._proto import grpc_broker_pb2 as bpb
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.core.errors import ProviderError
from workflow_eventbus.plugin.broker import ConnInfoStore
from workflow_eventbus.plugin.callbacks.client import CallbackClient
from workflow_eventbus.plugin.callbacks.errors import RpcError
from workflow_eventbus.plugin.callbacks.transport import TIMEOUT_ENV, UnaryTransport, open_channel


@pytest.fixture(params=["h2", "grpc"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["tcp", "unix"])
def where(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(loop_scope="session")
async def directory() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="wfeb-peer-") as path:
        yield path


@asynccontextmanager
async def engine(
    kind: str, where: str, directory: str, **settings: int
) -> AsyncIterator[tuple[StrictPeer, UnaryTransport]]:
    """A strict peer and a channel to it; the peer must have seen no violation."""
    async with running_peer(where, directory, **settings) as (peer, network, address):
        channel = open_channel(network, address, kind=kind)
        try:
            yield peer, channel
        finally:
            peer.release.set()
            await channel.close()
    assert peer.violations == []


def near(timeout: float | None, deadline: float) -> bool:
    """A grpc-timeout as sent for ``deadline``: a little less (time passed), or a
    little more (grpc rounds up to a coarser unit: 0.5 s goes out as ``501m``)."""
    return timeout is not None and deadline * 0.8 < timeout <= deadline * 1.01 + 0.002


def trigger_request(trigger_type: str = "pipeline:orders", **data: Any) -> bytes:
    request = ppb.TriggerWorkflowRequest(trigger_type=trigger_type, action="message")
    request.data.update(data)
    return request.SerializeToString()


async def test_calls_get_their_own_answers(kind: str, where: str, directory: str) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        bodies = [os.urandom(i % 300) for i in range(200)]
        assert await asyncio.gather(*(channel.unary(ECHO, b, T) for b in bodies)) == bodies
        answer = await channel.unary(TRIGGER, trigger_request(subject="a.b"), T)
        assert ppb.ErrorResponse.FromString(answer).error == ""
        assert peer.triggers[0].data["subject"] == "a.b"
        log = ppb.LogRequest(level="info", message="hello").SerializeToString()
        assert await channel.unary(LOG, log, T) == b""
        assert peer.logs[0].message == "hello"
        assert all(near(call.timeout, T) for call in peer.calls)  # each carried its deadline


async def test_an_unknown_method_is_unimplemented(kind: str, where: str, directory: str) -> None:
    async with engine(kind, where, directory) as (_, channel):
        with pytest.raises(RpcError) as missing:
            await channel.unary("/test.Strict/Nope", b"", T)
        assert missing.value.code == "UNIMPLEMENTED"
        assert await channel.unary(ECHO, b"fine", T) == b"fine"


async def test_calls_beyond_the_peers_stream_limit_queue(
    kind: str, where: str, directory: str
) -> None:
    async with engine(kind, where, directory, max_concurrent_streams=4) as (peer, channel):

        async def busy(request: ppb.TriggerWorkflowRequest) -> str:
            await asyncio.sleep(0.005)  # the pipeline's work, so calls overlap
            return ""

        peer.pipeline = busy
        await channel.unary(ECHO, b"warm", T)  # the peer's limit is known from here
        answers = await asyncio.gather(
            *(channel.unary(TRIGGER, trigger_request(), T) for _ in range(40))
        )
        assert [ppb.ErrorResponse.FromString(a).error for a in answers] == [""] * 40
        assert peer.most_active == 4


async def test_bodies_beyond_the_windows_are_paced(kind: str, where: str, directory: str) -> None:
    # The peer keeps HTTP/2's 65,535-byte windows and 16 KiB frames both ways.
    async with engine(kind, where, directory) as (_, channel):
        bodies = [os.urandom(300_000), os.urandom(3_000_000), os.urandom(70_000), b""]
        assert await asyncio.gather(*(channel.unary(ECHO, b, T) for b in bodies)) == bodies


async def test_a_call_past_its_deadline_fails_and_the_others_go_on(
    kind: str, where: str, directory: str
) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        loop = asyncio.get_running_loop()
        peer.release.clear()
        started = loop.time()
        held = asyncio.create_task(channel.unary(HOLD, b"never answered", 0.5))
        await until(lambda: peer.held == 1)
        bodies = [os.urandom(50) for _ in range(20)]
        assert await asyncio.gather(*(channel.unary(ECHO, b, T) for b in bodies)) == bodies
        with pytest.raises(RpcError) as late:
            await held
        elapsed = loop.time() - started
        assert late.value.code == "DEADLINE_EXCEEDED"
        assert 0.45 <= elapsed < 1.5
        hold = next(c for c in peer.calls if c.method == HOLD)
        assert near(hold.timeout, 0.5)
        await until(lambda: (hold.stream_id, CANCEL) in peer.resets)  # its stream was reset
        assert await channel.unary(ECHO, b"next", T) == b"next"
        assert len(peer.connections) == 1  # on the same connection


async def test_a_graceful_goaway_lets_open_calls_finish(
    kind: str, where: str, directory: str
) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        peer.release.clear()
        held = [asyncio.create_task(channel.unary(HOLD, b"%d" % i, T)) for i in range(2)]
        await until(lambda: peer.held == 2)
        peer.goaway(NO_ERROR)
        assert await channel.unary(ECHO, b"new", T) == b"new"  # on a new connection
        assert len(peer.connections) == 2
        peer.release.set()
        assert await asyncio.gather(*held) == [b"0", b"1"]


async def test_calls_above_a_goaways_last_stream_are_sent_again(
    kind: str, where: str, directory: str
) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        peer.release.clear()
        first = asyncio.create_task(channel.unary(HOLD, b"first", T))
        await until(lambda: peer.held == 1)
        second = asyncio.create_task(channel.unary(HOLD, b"second", T))
        await until(lambda: peer.held == 2)
        peer.goaway(NO_ERROR, last=peer.calls[0].stream_id)  # the second was never processed
        await until(lambda: peer.held == 3)  # ... so it came again, on a new connection
        peer.release.set()
        assert (await first, await second) == (b"first", b"second")


async def test_a_goaway_with_an_error_fails_the_open_calls(
    kind: str, where: str, directory: str
) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        peer.release.clear()
        held = asyncio.create_task(channel.unary(HOLD, b"x", T))
        await until(lambda: peer.held == 1)
        peer.goaway(INTERNAL_ERROR, hang_up=True)
        async with asyncio.timeout(5):
            with pytest.raises(RpcError) as gone:
                await held
        assert gone.value.code == "UNAVAILABLE"
        assert await channel.unary(ECHO, b"again", T) == b"again"  # reconnected


@pytest.mark.parametrize(("code", "status"), [(INTERNAL_ERROR, "INTERNAL"), (CANCEL, "CANCELLED")])
async def test_a_call_the_peer_resets_fails_with_its_status(
    kind: str, where: str, directory: str, code: int, status: str
) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        peer.reset_with = code
        with pytest.raises(RpcError) as reset:
            await channel.unary(ECHO, b"x", T)
        assert reset.value.code == status
        assert len(peer.calls) == 1  # processed, so not sent again
        assert await channel.unary(ECHO, b"y", T) == b"y"


async def test_refused_calls_are_sent_again(kind: str, where: str, directory: str) -> None:
    # REFUSED_STREAM: the server never processed the call, so it is safe to resend
    async with engine(kind, where, directory) as (peer, channel):
        await channel.unary(ECHO, b"warm", T)
        peer.refuse = 2
        assert await channel.unary(ECHO, b"x", T) == b"x"
        assert peer.refuse == 0
        assert [bytes(c.body[5:]) for c in peer.calls] == [b"warm", b"x"]


async def test_a_cancelled_call_resets_its_stream(kind: str, where: str, directory: str) -> None:
    async with engine(kind, where, directory) as (peer, channel):
        peer.release.clear()
        held = asyncio.create_task(channel.unary(HOLD, b"x", T))
        await until(lambda: peer.held == 1)
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
        stream_id = peer.calls[0].stream_id
        await until(lambda: (stream_id, CANCEL) in peer.resets)
        assert await channel.unary(ECHO, b"next", T) == b"next"


async def test_the_callback_client_on_either_transport(
    kind: str, where: str, directory: str
) -> None:
    async with running_peer(where, directory) as (peer, network, address):
        store = ConnInfoStore()
        await store.put(bpb.ConnInfo(service_id=1, network=network, address=address))
        client = CallbackClient(store, transport=kind, timeout=0.5, environ={})
        assert await client.configure(1) == ""

        def fill(data: struct_pb2.Struct) -> None:
            data.update({"payload": "x" * 400_000, "subject": "orders.new"})

        try:
            await client.trigger_workflow("pipeline:orders", "message", fill)
            assert peer.triggers[0].data["subject"] == "orders.new"
            assert len(peer.triggers[0].data["payload"]) == 400_000

            async def refuse(request: ppb.TriggerWorkflowRequest) -> str:
                return "step validate: bad order"

            peer.pipeline = refuse
            with pytest.raises(ProviderError, match="workflow failed: step validate: bad order"):
                await client.trigger_workflow("pipeline:orders", "message", fill)

            async def hang(request: ppb.TriggerWorkflowRequest) -> str:
                await asyncio.Event().wait()
                return ""

            peer.pipeline = hang
            with pytest.raises(ProviderError) as late:
                await client.trigger_workflow("pipeline:orders", "message", fill)
            assert "DEADLINE_EXCEEDED" in str(late.value)
            assert TIMEOUT_ENV in str(late.value)  # the message names the setting
        finally:
            await client.close()
    assert peer.violations == []
