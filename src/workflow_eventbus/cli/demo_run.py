"""The demo scenario: the plugin process driven over gRPC like the engine drives it.

1. a broker (embedded nats-server, a private PostgreSQL, or ``--dsn``);
2. the plugin process launched by the host harness (handshake, broker stream,
   callback server, ConfigureCallback);
3. broker, stream and consumer modules created and started over gRPC;
4. a ``trigger.eventbus.subscribe`` trigger whose TriggerWorkflow calls land in
   the harness, which counts them and measures latency from the publish time
   carried in each payload;
5. N events published through ``step.eventbus.publish`` (ExecuteStep; one
   single-message call, then batches of ``messages``);
6. wait until every event was delivered and the consumer has nothing pending
   or unacknowledged, then report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._proto import eventbus_pb2 as pb
from ..core.errors import ConfigError
from ..devservers import DEV_SERVERS
from ..devservers.host import PluginHost, TriggerCall
from ..engine.bus import EventBus
from ..providers import spec_for
from ..providers.capabilities import require_pending

STREAM = "DEMO_ORDERS"
SUBJECT = "demo.orders.created"
CONSUMER = "demo-worker"
WORKFLOW = "pipeline:process-order"


@dataclass(slots=True)
class DemoOptions:
    count: int = 3000
    batch: int = 250
    provider: str = "nats"
    dsn: str = ""
    max_in_flight: int = 32
    fetch_batch: int = 0  # 0: the library default
    timeout: float = 120.0
    engine: str | None = None  # None: the plugin under the host harness; else cmd/server
    via: str = "both"  # engine demo: "http", "jetstream" or "both" (half each)


@dataclass(slots=True)
class DemoStats:
    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    acked: int = 0
    seen: set[int] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    async def on_trigger(self, call: TriggerCall) -> str:
        """What the engine's pipeline would do: here, count and time the event."""
        self.record(call.data.get("body") or {}, int(call.data.get("delivery_count", 1)))
        return ""

    def record(self, body: dict[str, Any], delivery_count: int) -> None:
        """One received event: ``body`` is what :func:`event_body` wrote."""
        seq = int(body.get("seq", -1))
        if delivery_count > 1:
            self.redelivered += 1
        if seq not in self.seen:
            self.seen.add(seq)
            self.delivered = len(self.seen)
            self.latencies.append(time.time() - float(body.get("sent", time.time())))

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    @property
    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return self.delivered / elapsed if elapsed > 0 else 0.0


@asynccontextmanager
async def broker_dsn(opts: DemoOptions) -> AsyncIterator[str]:
    """The configured DSN, or a private server started for the demo."""
    if opts.dsn:
        yield opts.dsn
        return
    server_class = DEV_SERVERS.get(opts.provider)
    if server_class is None:
        raise ConfigError(
            "--provider",
            "has no development server to start",
            value=opts.provider,
            fix=f"use one of: {', '.join(DEV_SERVERS)}, or pass --dsn",
        )
    async with server_class() as server:
        yield server.url


def cluster_config(opts: DemoOptions, dsn: str) -> pb.ClusterConfig:
    return spec_for(opts.provider, where="--provider").fill_defaults(pb.ClusterConfig(dsn=dsn))


async def setup(host: PluginHost, opts: DemoOptions, dsn: str) -> str:
    """Modules and trigger over gRPC; returns the publish step handle."""
    handles = [
        await host.create_module("eventbus.broker", "bus", typed=cluster_config(opts, dsn)),
        await host.create_module(
            "eventbus.stream", "orders", typed=pb.StreamConfig(name=STREAM, subjects=["demo.>"])
        ),
        await host.create_module(
            "eventbus.consumer",
            "worker",
            typed=pb.ConsumerConfig(name=CONSUMER, stream_name=STREAM, filter_subject=SUBJECT),
        ),
    ]
    for handle in handles:
        await host.init_module(handle)
    for handle in handles:
        await host.start_module(handle)
    trigger = await host.create_trigger(
        "trigger.eventbus.subscribe",
        WORKFLOW,
        {
            "consumer": CONSUMER,
            "bus": "bus",
            "max_in_flight": opts.max_in_flight,
            "fetch_batch": opts.fetch_batch,
        },
    )
    await host.start_module(trigger)
    return await host.create_step("step.eventbus.publish", "publish", {"subject": SUBJECT})


def event_body(seq: int) -> bytes:
    """An order event; ``sent`` (epoch seconds) is what the latency is measured from."""
    body = {"seq": seq, "sent": time.time(), "order": f"ord-{seq:06d}", "amount": seq % 97}
    return json.dumps(body).encode()


def event(seq: int) -> pb.PublishRequest:
    return pb.PublishRequest(payload=event_body(seq), headers={"source": "demo"})


async def publish_all(host: PluginHost, step: str, opts: DemoOptions, stats: DemoStats) -> None:
    """The first event as a single ExecuteStep, the rest in batches (``messages``)."""
    await host.run_step(step, event(0), pb.PublishResponse)
    stats.published = 1
    seq = 1
    while seq < opts.count:
        size = min(opts.batch, opts.count - seq)
        batch = pb.PublishRequest(messages=[event(i) for i in range(seq, seq + size)])
        out = await host.run_step(step, batch, pb.PublishResponse)
        failed = [r.error for r in out.results if r.error]
        if failed:
            raise ConfigError("publish", f"{len(failed)} events were rejected", value=failed[0])
        seq += size
        stats.published = seq


async def count_pending(opts: DemoOptions, dsn: str) -> tuple[int, int]:
    """Ask the broker itself (own connection) what is still pending / unacknowledged."""
    bus = EventBus()
    broker = bus.create_module("eventbus.broker", "check", cluster_config(opts, dsn))
    await broker.init()
    await broker.start()
    try:
        return await require_pending(bus.provider("check")).pending(STREAM, CONSUMER)
    finally:
        await broker.stop()


async def wait_settled(opts: DemoOptions, dsn: str, stats: DemoStats, deadline: float) -> None:
    while time.monotonic() < deadline:
        undelivered, unacked = await count_pending(opts, dsn)
        if stats.delivered >= opts.count and undelivered == 0 and unacked == 0:
            stats.acked = stats.published - undelivered - unacked
            return
        await asyncio.sleep(0.2)
    undelivered, unacked = await count_pending(opts, dsn)
    stats.acked = max(0, stats.published - undelivered - unacked)


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


async def watch(
    progress: Progress,
    stats: DemoStats,
    publisher: asyncio.Task[None],
    *,
    total: int,
    deadline: float,
    received: str = "delivered",
    check: Callable[[], None] | None = None,
) -> None:
    """Show the published and received counts until every event arrived (or the
    deadline passed, or the publisher failed); then await the publisher.

    ``check`` may raise to give up early (a server the demo depends on exited)."""
    published = progress.add_task("published", total=total)
    delivered = progress.add_task(received, total=total)
    try:
        while stats.delivered < total and time.monotonic() < deadline:
            if publisher.done() and publisher.exception() is not None:
                break
            if check is not None:
                check()
            progress.update(published, completed=stats.published)
            progress.update(delivered, completed=stats.delivered)
            await asyncio.sleep(0.05)
        progress.update(published, completed=stats.published)
        progress.update(delivered, completed=stats.delivered)
        await publisher
    finally:
        if not publisher.done():  # given up, or cancelled (Ctrl-C, SIGTERM)
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await publisher


def summary(stats: DemoStats) -> dict[str, Any]:
    return {
        "published": stats.published,
        "delivered": stats.delivered,
        "acked": stats.acked,
        "redelivered": stats.redelivered,
        "msg_per_s": round(stats.rate, 1),
        "p50_ms": round(stats.percentile(0.50) * 1000, 2),
        "p99_ms": round(stats.percentile(0.99) * 1000, 2),
    }
