"""pgchannel specifics beyond the conformance suite: tokens, limits, locks, outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.core.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    PayloadTooLargeError,
)
from workflow_eventbus.core.headers import CORRELATION_HEADER, LEGACY_CORRELATION_HEADER
from workflow_eventbus.devservers.postgres import PgServer
from workflow_eventbus.providers.base import AckAction, OutboundMessage
from workflow_eventbus.providers.pgchannel import PgChannelProvider, consumer_lock_key
from workflow_eventbus.providers.pgchannel import queries as q

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.postgres]


def _provider(dsn: str, schema: str, poll: str = "200ms") -> PgChannelProvider:
    cluster = pb.ClusterConfig(
        provider="pgchannel",
        broker_target="in_process",
        dsn=dsn,
        schema=schema,
        poll_interval=poll,
    )
    return PgChannelProvider(cluster, dsn, broker_name="it")


@pytest_asyncio.fixture(loop_scope="session")
async def pg(pg_dsn: str, pg_schema: str) -> AsyncIterator[PgChannelProvider]:
    provider = _provider(pg_dsn, pg_schema)
    await provider.connect(10)
    yield provider
    await provider.close()


async def _stream(p: PgChannelProvider, **kw: Any) -> tuple[str, str]:
    token = uuid.uuid4().hex[:8]
    name, root = f"S_{token}", f"r{token}"
    await p.ensure_stream(pb.StreamConfig(name=name, subjects=[f"{root}.>"], **kw))
    return name, root


async def _consumer(p: PgChannelProvider, stream: str, **kw: Any) -> str:
    name = f"c_{uuid.uuid4().hex[:8]}"
    kw.setdefault("ack_wait", to_duration(30))
    await p.ensure_consumer(pb.ConsumerConfig(name=name, stream_name=stream, **kw))
    return name


async def _count(dsn: str, schema: str, stream: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE stream_name = %s").format(
                sql.Identifier(schema, "eventbus_events")
            ),
            (stream,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else -1


async def test_correlation_id_under_both_header_names(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg)
    durable = await _consumer(pg, stream)
    await pg.publish(OutboundMessage(f"{root}.a", b"x", correlation_id="c-9"))
    (d,) = await pg.fetch(stream, durable, 1, 2.0)
    assert d.headers[CORRELATION_HEADER] == d.headers[LEGACY_CORRELATION_HEADER] == "c-9"


async def test_stale_token_cannot_touch_the_new_delivery(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg)
    durable = await _consumer(pg, stream, ack_wait=to_duration(0.5))
    await pg.publish(OutboundMessage(f"{root}.a", b"x"))
    (first,) = await pg.fetch(stream, durable, 1, 2.0)
    (second,) = await pg.fetch(stream, durable, 1, 3.0)  # lease ran out: redelivered
    assert second.delivery_count == 2 and first.ack_token != second.ack_token
    await pg.settle([second.ack_token], AckAction.IN_PROGRESS)
    await pg.settle([first.ack_token], AckAction.NAK)  # stale: ignored
    assert await pg.fetch(stream, durable, 1, 0.3) == []
    await pg.settle([first.ack_token], AckAction.ACK)  # a late ack still settles (as on NATS)
    assert await pg.pending(stream, durable) == (0, 0)


async def test_ack_policy_none_and_all(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg)
    none = await _consumer(pg, stream, ack_policy=pb.ACK_POLICY_NONE, ack_wait=to_duration(0.3))
    every = await _consumer(pg, stream, ack_policy=pb.ACK_POLICY_ALL)
    for i in range(3):
        await pg.publish(OutboundMessage(f"{root}.a", str(i).encode()))
    assert len(await pg.fetch(stream, none, 10, 2.0)) == 3
    assert await pg.fetch(stream, none, 10, 0.8) == []  # never redelivered
    got = await pg.fetch(stream, every, 10, 2.0)
    await pg.settle([got[1].ack_token], AckAction.ACK)  # AckAll: acks 0 and 1
    assert await pg.pending(stream, every) == (0, 1)


async def test_limits_max_msgs_and_max_bytes(pg: PgChannelProvider, pg_dsn: str) -> None:
    stream, root = await _stream(pg, max_msgs=3)
    for i in range(5):
        await pg.publish(OutboundMessage(f"{root}.a", str(i).encode()))
    await pg.enforce_limits()
    assert await _count(pg_dsn, pg.schema, stream) == 3
    durable = await _consumer(pg, stream)
    assert [d.payload for d in await pg.fetch(stream, durable, 10, 1.0)] == [b"2", b"3", b"4"]
    sized, root2 = await _stream(pg, max_bytes=110)
    for _ in range(5):
        await pg.publish(OutboundMessage(f"{root2}.a", b"x" * 40))
    await pg.enforce_limits()
    assert await _count(pg_dsn, pg.schema, sized) == 2  # 2 x (40 + 11 subject bytes) <= 110


async def test_max_age_hides_then_purges(pg: PgChannelProvider, pg_dsn: str) -> None:
    stream, root = await _stream(pg, max_age=to_duration(1))
    durable = await _consumer(pg, stream)
    await pg.publish(OutboundMessage(f"{root}.a", b"old"))
    await asyncio.sleep(1.1)  # let the message age past max_age (the behaviour under test)
    assert await pg.fetch(stream, durable, 10, 0.2) == []
    await pg.enforce_limits()
    assert await _count(pg_dsn, pg.schema, stream) == 0


async def test_workqueue_deletes_on_ack_and_interest_on_sweep(
    pg: PgChannelProvider, pg_dsn: str
) -> None:
    wq, root = await _stream(pg, retention_policy=pb.RETENTION_POLICY_WORKQUEUE)
    worker = await _consumer(pg, wq)
    await pg.publish(OutboundMessage(f"{root}.a", b"job"))
    (job,) = await pg.fetch(wq, worker, 1, 2.0)
    await pg.settle([job.ack_token], AckAction.ACK)
    assert await _count(pg_dsn, pg.schema, wq) == 0
    interest, root2 = await _stream(pg, retention_policy=pb.RETENTION_POLICY_INTEREST)
    a, b = await _consumer(pg, interest), await _consumer(pg, interest)
    await pg.publish(OutboundMessage(f"{root2}.a", b"x"))
    (da,) = await pg.fetch(interest, a, 1, 2.0)
    await pg.settle([da.ack_token], AckAction.ACK)
    await pg.fetch(interest, a, 1, 0)  # moves a's ack floor
    await pg.enforce_limits()
    assert await _count(pg_dsn, pg.schema, interest) == 1  # b has not settled it yet
    (db,) = await pg.fetch(interest, b, 1, 2.0)
    await pg.settle([db.ack_token], AckAction.ACK)
    await pg.fetch(interest, b, 1, 0)
    await pg.enforce_limits()
    assert await _count(pg_dsn, pg.schema, interest) == 0


async def test_sweep_forgets_leases_of_purged_events(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg, max_msgs=1)
    durable = await _consumer(pg, stream)
    for i in range(3):
        await pg.publish(OutboundMessage(f"{root}.a", str(i).encode()))
    got = await pg.fetch(stream, durable, 10, 2.0)
    assert await pg.pending(stream, durable) == (0, 3)
    await pg.enforce_limits()  # purges the first two, leased or not
    assert await pg.pending(stream, durable) == (0, 1)
    await pg.settle([got[2].ack_token], AckAction.ACK)
    await pg.fetch(stream, durable, 1, 0)
    assert await pg.pending(stream, durable) == (0, 0)


async def test_a_publish_in_flight_holds_back_later_ones(
    pg: PgChannelProvider, pg_dsn: str
) -> None:
    """Ids of a stream become visible in id order, so a consumer cursor skips none."""
    stream, root = await _stream(pg)
    _, other_root = await _stream(pg)
    durable = await _consumer(pg, stream)
    info = await pg._stream_for(f"{root}.a")
    params = pg._publish_params(OutboundMessage(f"{root}.a", b"first"), info)
    events = f"{pg.schema}.eventbus_events"
    async with (
        await psycopg.AsyncConnection.connect(pg_dsn) as slow,
        await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as probe,
    ):
        await slow.execute(pg.sql(q.PUBLISH), params)  # id drawn, transaction still open
        later = asyncio.create_task(pg.publish(OutboundMessage(f"{root}.a", b"second")))
        done, _ = await asyncio.wait({later}, timeout=0.5)
        assert not done  # waits for the stream's publish lock
        assert await pg.fetch(stream, durable, 10, 0.2) == []
        # Publishers of another stream do not wait.
        await asyncio.wait_for(pg.publish(OutboundMessage(f"{other_root}.a", b"x")), 2.0)
        cur = await probe.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", (events,))
        drawn_while_waiting = (await cur.fetchone() or (0,))[0]
        await slow.commit()
    second = await later
    assert second.sequence > drawn_while_waiting  # its id was drawn after the lock was taken
    got = await pg.fetch(stream, durable, 10, 2.0)
    assert [d.payload for d in got] == [b"first", b"second"]


async def test_rejections(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg, max_msg_size=4)
    with pytest.raises(PayloadTooLargeError, match="max_msg_size"):
        await pg.publish(OutboundMessage(f"{root}.a", b"12345"))
    with pytest.raises(ConflictError, match="overlaps"):
        await pg.ensure_stream(pb.StreamConfig(name="OTHER_" + stream, subjects=[f"{root}.*"]))
    with pytest.raises(ConflictError, match="retention"):
        await pg.ensure_stream(
            pb.StreamConfig(
                name=stream, subjects=[f"{root}.>"], retention_policy=pb.RETENTION_POLICY_WORKQUEUE
            )
        )
    with pytest.raises(ConfigError, match=r"\[A-Za-z0-9_\]"):
        await pg.ensure_stream(pb.StreamConfig(name="bad-name", subjects=["zz.>"]))
    with pytest.raises(ConfigError, match="':'"):
        await pg.ensure_consumer(pb.ConsumerConfig(name="a:b", stream_name=stream))


async def test_hostile_text_is_data_not_sql(pg: PgChannelProvider) -> None:
    stream, root = await _stream(pg)
    plus = await _consumer(pg, stream, filter_subject=f"{root}.a+b")
    everything = await _consumer(pg, stream)
    hostile = f"{root}.x');DROP_TABLE_eventbus_events;--"
    await pg.publish(OutboundMessage(hostile, b"1", headers={"k'\"": "v'); --"}))
    await pg.publish(OutboundMessage(f"{root}.aab", b"2"))
    await pg.publish(OutboundMessage(f"{root}.a+b", b"3"))
    got = await pg.fetch(stream, everything, 10, 2.0)
    assert [d.subject for d in got] == [hostile, f"{root}.aab", f"{root}.a+b"]
    assert got[0].headers["k'\""] == "v'); --"
    assert [d.payload for d in await pg.fetch(stream, plus, 10, 2.0)] == [b"3"]


async def test_go_subscriber_lock_excludes_python_claims(
    pg: PgChannelProvider, pg_dsn: str
) -> None:
    stream, root = await _stream(pg)
    durable = await _consumer(pg, stream)
    await pg.publish(OutboundMessage(f"{root}.a", b"x"))
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as go_pod:
        # What a Go pod's Subscribe holds for the whole time it runs.
        await go_pod.execute("SELECT pg_advisory_lock(%s)", (consumer_lock_key(stream, durable),))
        assert await pg.fetch(stream, durable, 1, 0.5) == []
        await go_pod.execute("SELECT pg_advisory_unlock_all()")
    (d,) = await pg.fetch(stream, durable, 1, 5.0)
    assert d.payload == b"x"


async def test_notify_wakes_a_waiting_fetch_before_the_poll(pg_dsn: str, pg_schema: str) -> None:
    slow = _provider(pg_dsn, pg_schema, poll="30s")
    other = _provider(pg_dsn, pg_schema)
    await slow.connect(10)
    await other.connect(10)
    try:
        stream, root = await _stream(other)
        durable = await _consumer(other, stream)
        assert await slow.fetch(stream, durable, 1, 0.7) == []  # LISTEN is set up by now
        waiting = asyncio.create_task(slow.fetch(stream, durable, 1, 20.0))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        await other.publish(OutboundMessage(f"{root}.a", b"wake"))
        (d,) = await waiting
        assert d.payload == b"wake"
        assert time.monotonic() - start < 3.0
    finally:
        await slow.close()
        await other.close()


async def test_outage_raises_broker_unavailable_then_resumes(pg_server_fresh: PgServer) -> None:
    provider = _provider(pg_server_fresh.dsn, "public")
    provider.op_timeout = 1.0
    await provider.connect(10)
    try:
        stream, root = await _stream(provider)
        durable = await _consumer(provider, stream)
        await provider.publish(OutboundMessage(f"{root}.a", b"1"))
        await pg_server_fresh.stop()
        with pytest.raises(BrokerUnavailableError) as err:
            await provider.publish(OutboundMessage(f"{root}.a", b"2"))
        assert "unreachable" in str(err.value)
        with pytest.raises(BrokerUnavailableError):
            await provider.fetch(stream, durable, 1, 0.1)
        assert not provider.connected
        await pg_server_fresh.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                await provider.publish(OutboundMessage(f"{root}.a", b"2"))
                break
            except BrokerUnavailableError:
                assert time.monotonic() < deadline
        got = await provider.fetch(stream, durable, 10, 5.0)
        assert [d.payload for d in got] == [b"1", b"2"]
        assert provider.connected
    finally:
        await provider.close()
