"""Health and Log entries of the plugin process across a nats-server crash and restart.

The plugin runs as the engine runs it (host harness); its broker module talks to
a private nats-server that the test kills (SIGKILL) and restarts on the same
port. The gRPC health service (``plugin`` and ``""``, what go-plugin's Ping asks)
must follow the connection, and the engine's callback server must receive the
structured Log entries: broker lost, broker restored, message dead-lettered.
The same for a pgchannel broker across a PostgreSQL stop and start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from google.protobuf import duration_pb2

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import LogEntry, PluginHost, TriggerCall
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.devservers.postgres import PgServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

SECRET = "s3cret-pw"  # in the broker URL: must never reach a Log entry


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def health_becomes(host: PluginHost, status: str, timeout: float = 20.0) -> None:
    async def reached() -> bool:
        return await host.health("plugin") == status

    await poll(reached, timeout, f"health {status}")
    assert await host.health("") == status  # the whole server says the same


def entries(host: PluginHost, event: str) -> list[LogEntry]:
    return [e for e in host.callback_server.logs if e.fields.get("event") == event]


async def entry(host: PluginHost, event: str, timeout: float = 10.0) -> LogEntry:
    async def arrived() -> bool:
        return bool(entries(host, event))

    await poll(arrived, timeout, f"a Log entry {event}")
    return entries(host, event)[0]


def url_with_password(server: EmbeddedNats) -> str:
    # nats-server without an authorization block accepts any credentials.
    return server.url.replace("nats://", f"nats://eventbus:{SECRET}@")


async def start_broker(host: PluginHost, url: str) -> str:
    handle = await host.create_module(
        "eventbus.broker",
        "bus",
        typed=pb.ClusterConfig(provider="nats", deploy_target="self_hosted", dsn=url),
    )
    await host.init_module(handle)
    await host.start_module(handle)
    return handle


async def fail_everything(call: TriggerCall) -> str:
    return "workflow execution failed: step charge: card declined"


async def test_health_and_log_entries_follow_the_broker_connection(
    nats_server_fresh: EmbeddedNats,
) -> None:
    server = nats_server_fresh
    async with PluginHost(on_trigger=fail_everything) as host:
        broker = await start_broker(host, url_with_password(server))
        assert await host.health("plugin") == "SERVING"
        assert await host.health("") == "SERVING"

        # A message whose pipeline fails once, with max_deliver 1: dead-lettered.
        for kind, name, typed in (
            ("eventbus.stream", "s", pb.StreamConfig(name="HEALTH", subjects=["health.>"])),
            (
                "eventbus.consumer",
                "c",
                pb.ConsumerConfig(name="charge", stream_name="HEALTH", max_deliver=1),
            ),
        ):
            handle = await host.create_module(kind, name, typed=typed)
            await host.init_module(handle)
            await host.start_module(handle)
        trigger = await host.create_trigger(
            "trigger.eventbus.subscribe", "pipeline:charge", {"consumer": "charge"}
        )
        await host.start_module(trigger)
        publish = await host.create_step("step.eventbus.publish", "p", {"subject": "health.a"})
        sent = await host.run_step(publish, pb.PublishRequest(payload=b"{}"), pb.PublishResponse)
        dead = await entry(host, "message.dead_lettered")
        assert dead.level == "warn"
        assert dead.fields["broker"] == "bus"
        assert (dead.fields["stream"], dead.fields["consumer"]) == ("HEALTH", "charge")
        assert dead.fields["subject"] == "health.a"
        assert dead.fields["sequence"] == int(sent.sequence)
        assert dead.fields["delivery_count"] == 1
        assert "card declined" in dead.fields["error"]
        assert dead.fields["logger"] == "workflow_eventbus.engine.subscriber"
        await host.stop_module(trigger)

        server.kill()
        await health_becomes(host, "NOT_SERVING")
        lost = await entry(host, "broker.lost")
        assert lost.level == "warn"
        assert (lost.fields["broker"], lost.fields["provider"]) == ("bus", "nats")
        assert lost.fields["reason"]  # e.g. "nats: unexpected EOF"
        assert lost.fields["url"] == f"nats://eventbus:***@127.0.0.1:{server.port}"
        assert "lost" in lost.message
        assert not entries(host, "broker.restored")

        await server.restart()
        await health_becomes(host, "SERVING", timeout=30)
        restored = await entry(host, "broker.restored")
        assert restored.level == "info"
        assert restored.fields["broker"] == "bus"

        # Down again, then the broker module is stopped: a stopped broker does not count.
        server.kill()
        await health_becomes(host, "NOT_SERVING")
        await host.stop_module(broker)
        assert await host.health("plugin") == "SERVING"

        every = [(e.level, e.message, e.fields) for e in host.callback_server.logs]
        assert SECRET not in repr(every)
        assert SECRET not in "\n".join(host.stderr_lines)


async def test_log_entries_start_once_configure_callback_connected(
    nats_server_fresh: EmbeddedNats,
) -> None:
    """Before ConfigureCallback there is no engine to tell: stderr only."""
    server = nats_server_fresh
    async with PluginHost(load=False) as host:
        await start_broker(host, server.url)
        server.kill()
        await health_becomes(host, "NOT_SERVING")

        async def on_stderr() -> bool:
            return any("connection to" in line and "lost" in line for line in host.stderr_lines)

        await poll(on_stderr, 10, "the broker-lost line on stderr")
        await host.load_sequence()  # the engine's load RPCs, ConfigureCallback among them

        await server.restart()
        await health_becomes(host, "SERVING", timeout=30)
        await entry(host, "broker.restored")
        assert not entries(host, "broker.lost")  # it happened before the channel existed


async def test_pgchannel_health_follows_the_server(pg_server_fresh: PgServer) -> None:
    """pgchannel is down once a statement finds the server unreachable (the retention
    sweep runs one every few seconds even when nothing else does) and up again once
    one completes."""
    server = pg_server_fresh
    dsn = server.dsn.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    async with PluginHost() as host:
        handle = await host.create_module(
            "eventbus.broker",
            "pg",
            typed=pb.ClusterConfig(
                provider="pgchannel",
                deploy_target="self_hosted",
                broker_target="in_process",
                dsn=dsn,
                connect_timeout=duration_pb2.Duration(seconds=1),  # also each operation's
            ),
        )
        await host.init_module(handle)
        await host.start_module(handle)
        assert await host.health() == "SERVING"

        await server.stop()
        await health_becomes(host, "NOT_SERVING", timeout=30)
        lost = await entry(host, "broker.lost")
        assert (lost.fields["broker"], lost.fields["provider"]) == ("pg", "pgchannel")
        assert lost.fields["reason"]  # what failed, e.g. the sweep getting no connection

        await server.start()
        await health_becomes(host, "SERVING", timeout=60)
        restored = await entry(host, "broker.restored")
        assert restored.fields["broker"] == "pg"
        every = [(e.level, e.message, e.fields) for e in host.callback_server.logs]
        assert SECRET not in repr(every)
