"""AckConfirmer's bookkeeping with a stand-in connection (the real-server tests are in
tests/integration/test_nats_settle.py and the chaos suite)."""

from __future__ import annotations

import asyncio
from typing import Any

from workflow_eventbus.providers.nats.acks import AckConfirmer


class Conn:
    """Records what is published; every PING is answered."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.pings = 0
        self.is_connected = True
        self.is_closed = False

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.published.append(subject)

    async def flush(self, timeout: float = 0) -> None:
        self.pings += 1


async def settled(reconnect_between: bool) -> Conn:
    conn = Conn()
    up = asyncio.Event()
    up.set()
    acks = AckConfirmer(lambda: conn, up, 1.0)  # type: ignore[arg-type, return-value]
    acks.start()
    try:
        await acks.queue(["$JS.ACK.a", "$JS.ACK.b"], b"+ACK")
        await acks.write()
        if reconnect_between:
            acks.reconnected()  # the acks went into the socket of the old connection
        for _ in range(100):
            await asyncio.sleep(0.01)
            if conn.pings and not acks._confirming and not acks._unconfirmed:
                break
    finally:
        await acks.close()
    return conn


async def test_acks_confirmed_on_their_own_connection_are_sent_once() -> None:
    conn = await settled(reconnect_between=False)
    assert conn.published == ["$JS.ACK.a", "$JS.ACK.b"]


async def test_acks_written_before_a_reconnect_are_sent_again() -> None:
    """A PONG on the new connection says nothing about the old socket's contents."""
    conn = await settled(reconnect_between=True)
    assert conn.published == ["$JS.ACK.a", "$JS.ACK.b"] * 2


class SwallowingConn(Conn):
    """A flush that loses the first cancellation, as 3.11's wait_for can."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def flush(self, timeout: float = 0) -> None:
        self.pings += 1
        self.entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return  # swallowed: the PONG "arrived" with the cancel


async def test_close_stops_a_confirmer_whose_flush_swallowed_the_cancel() -> None:
    conn = SwallowingConn()
    up = asyncio.Event()
    up.set()
    acks = AckConfirmer(lambda: conn, up, 1.0)  # type: ignore[arg-type, return-value]
    acks.start()
    await acks.queue(["$JS.ACK.a"], b"+ACK")
    await acks.write()
    await asyncio.wait_for(conn.entered.wait(), 2)
    confirmer = acks._confirmer
    assert confirmer is not None
    closing = asyncio.ensure_future(acks.close())
    await asyncio.wait({closing}, timeout=2)
    assert closing.done()  # before cancel_and_wait, close() waited for ever
    assert confirmer.done()
