"""PostgreSQL restarted (and killed) under a pgchannel publish-and-consume run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from reliability_helpers import Tally, make_bus, publish_all, unique, until

from workflow_eventbus.devservers.postgres import PgServer
from workflow_eventbus.engine.trigger import SubscribeTrigger

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

N = 1500


@pytest.mark.parametrize("fault", ["restart", "kill"])
async def test_postgres_outage_during_pgchannel_run(
    pg_server_fresh: PgServer, record: Any, fault: str
) -> None:
    server = pg_server_fresh
    tally = Tally(f"postgres {fault} (pgchannel)")
    stream = unique("PGCHAOS")
    subject = f"{stream.lower()}.e"
    # The test server runs with synchronous_commit=off (fast, but a crash loses the
    # last ~200 ms of commits: measured here as lost acknowledged publishes). A
    # publish is only as durable as its commit: the broker sessions ask for it.
    dsn = server.dsn + "?options=-csynchronous_commit%3Don"
    bus = await make_bus(
        "pgchannel",
        dsn,
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        consumer={"name": "w", "ack_wait": "3s"},
        broker={"schema": unique("chaos_").lower(), "poll_interval": "100ms"},
    )

    async def handler(data: dict[str, Any]) -> None:
        i = data["body"]["i"]
        tally.note(i)
        tally.processed.add(i)

    trig = SubscribeTrigger.from_trigger_config(
        bus, "p", {"consumer": "w", "max_in_flight": 8}, handler
    )
    await trig.start()
    publisher = asyncio.create_task(
        publish_all(lambda: bus.provider("bus"), subject, tally, range(N))
    )
    try:
        await until(lambda: len(tally.broker_acked) >= N // 3, timeout=60, what="a third published")
        if fault == "kill":
            await server.kill()
            await until(lambda: tally.publish_errors > 0, what="the publisher noticing")
            await server.start()
        else:
            await server.restart(down_for=1.0)
        await publisher
        try:
            await until(
                lambda: tally.processed >= tally.broker_acked,
                timeout=60,
                what="all acked processed",
            )
        except AssertionError:
            sub = trig.subscription
            missing = sorted(tally.broker_acked - tally.processed)
            pending = await bus.provider("bus").pending(stream, "w")
            raise AssertionError(
                f"missing {len(missing)} e.g. {missing[:10]}; stats {sub and sub.stats}; "
                f"pending {pending}"
            ) from None
    finally:
        publisher.cancel()
        await trig.stop()
        await bus.close()
    record(tally)
    assert len(tally.broker_acked) == N and tally.lost == 0
