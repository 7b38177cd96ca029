"""``demo --engine``: the demo inside the real workflow engine (cmd/server).

1. a private nats-server with JetStream;
2. the plugin installed (the ``install`` command's code) into a temporary data
   directory, and an app config written next to it: broker, stream and consumer
   modules, an HTTP route ``POST /orders`` whose pipeline publishes the request
   body with ``step.eventbus.publish``, and a ``trigger.eventbus.subscribe``
   pipeline that publishes each event again as ``demo.orders.derived``;
3. cmd/server started on a random loopback HTTP port, ready once the plugin is
   loaded, its modules and triggers started and the port accepts connections;
4. N events published: through the HTTP route, straight into JetStream, or half
   each (``--via``);
5. every derived event counted by a core NATS subscription (latency from the
   publish time in the payload, which the engine passes on unchanged), then the
   consumer's own state read until nothing is pending or unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from rich.console import Console

from ..core.errors import ConfigError
from ..devservers.engine import EngineError, EngineProcess, find_engine
from ..devservers.nats_server import EmbeddedNats
from ..devservers.processes import free_port
from .demo_run import (
    CONSUMER,
    STREAM,
    SUBJECT,
    WORKFLOW,
    DemoOptions,
    DemoStats,
    event_body,
    progress_bar,
    summary,
    wait_settled,
    watch,
)
from .install import install

DERIVED = "demo.orders.derived"
HTTP_CONCURRENCY = 16
VIA = ("both", "http", "jetstream")


@dataclass(slots=True)
class EngineStats(DemoStats):
    published_http: int = 0
    published_direct: int = 0
    engine_exit: int | None = None

    async def on_derived(self, msg: Msg) -> None:
        """A derived event from the subscription (the engine's pipeline published it)."""
        try:
            body = json.loads(msg.data)
        except ValueError:
            return  # not one of ours
        count = (msg.headers or {}).get("delivery-count", "1")
        self.record(body, int(count) if count.isdigit() else 1)

    def count_published(self) -> None:
        self.published = self.published_http + self.published_direct


def app_config(opts: DemoOptions, nats_url: str, http_port: int) -> dict[str, Any]:
    """The app cmd/server runs (the shape of interop/apps/orders.yaml)."""
    trigger: dict[str, Any] = {
        "name": CONSUMER,
        "broker_ref": "bus",
        "max_in_flight": opts.max_in_flight,
    }
    if opts.fetch_batch:
        trigger["fetch_batch"] = opts.fetch_batch
    return {
        "name": "eventbus-demo",
        "modules": [
            {"name": "web", "type": "http.server", "config": {"address": f"127.0.0.1:{http_port}"}},
            {"name": "router", "type": "http.router", "dependsOn": ["web"]},
            {
                "name": "bus",
                "type": "eventbus.broker",
                "config": {"provider": "nats", "deploy_target": "self_hosted", "dsn": nats_url},
            },
            {
                "name": "orders",
                "type": "eventbus.stream",
                "dependsOn": ["bus"],
                "config": {"name": STREAM, "broker_ref": "bus", "subjects": ["demo.>"]},
            },
            {
                "name": "worker",
                "type": "eventbus.consumer",
                "dependsOn": ["orders"],
                "config": {
                    "name": CONSUMER,
                    "stream_name": STREAM,
                    "broker_ref": "bus",
                    "filter_subject": SUBJECT,
                },
            },
        ],
        "workflows": {"http": {"server": "web", "router": "router"}},
        "pipelines": {
            "ingest": {
                "trigger": {
                    "type": "http",
                    "config": {"path": "/orders", "method": "POST", "include_raw_body": True},
                },
                "steps": [
                    {
                        "name": "publish",
                        "type": "step.eventbus.publish",
                        "config": {
                            "subject": SUBJECT,
                            "payload": "{{ .request_body }}",
                            "headers": {"source": "http-ingest"},
                        },
                    },
                    {
                        "name": "respond",
                        "type": "step.json_response",
                        "config": {
                            "status": 202,
                            "body": {"sequence": "{{ .steps.publish.sequence }}"},
                        },
                    },
                ],
            },
            WORKFLOW.removeprefix("pipeline:"): {
                "trigger": {"type": "trigger.eventbus.subscribe", "config": trigger},
                "steps": [
                    {
                        # No payload in the config: the step takes the event's bytes
                        # from the trigger data.
                        "name": "publish-derived",
                        "type": "step.eventbus.publish",
                        "config": {
                            "subject": DERIVED,
                            "headers": {
                                "source-sequence": "{{ .sequence }}",
                                "delivery-count": "{{ .delivery_count }}",
                            },
                        },
                    }
                ],
            },
        },
    }


async def post_order(port: int, body: bytes) -> None:
    """``POST /orders`` (one connection per request); EngineError unless 202."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status = await reader.readline()
        await reader.read()  # the rest, until the engine closes the connection
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status.split()
    if len(parts) < 2 or parts[1] != b"202":
        line = status.decode(errors="replace").strip() or "no answer"
        raise EngineError(f"POST /orders: the ingest pipeline answered {line!r}, not 202")


def split(opts: DemoOptions) -> tuple[list[int], list[int]]:
    """(sequence numbers sent over HTTP, those published straight to JetStream)."""
    seqs = range(opts.count)
    if opts.via == "http":
        return list(seqs), []
    if opts.via == "jetstream":
        return [], list(seqs)
    return [s for s in seqs if s % 2 == 0], [s for s in seqs if s % 2]


async def publish_http(port: int, seqs: list[int], stats: EngineStats) -> None:
    pending = iter(seqs)

    async def worker() -> None:
        for seq in pending:  # shared: each number is taken by one worker
            await post_order(port, event_body(seq))
            stats.published_http += 1
            stats.count_published()

    async with asyncio.TaskGroup() as group:
        for _ in range(min(HTTP_CONCURRENCY, len(seqs))):
            group.create_task(worker())


async def publish_direct(
    js: JetStreamContext, seqs: list[int], batch: int, stats: EngineStats
) -> None:
    for start in range(0, len(seqs), batch):
        chunk = seqs[start : start + batch]
        await asyncio.gather(
            *(js.publish(SUBJECT, event_body(s), headers={"source": "demo-direct"}) for s in chunk)
        )
        stats.published_direct += len(chunk)
        stats.count_published()


async def run_engine_demo(opts: DemoOptions, console: Console) -> EngineStats:
    if opts.via not in VIA:
        raise ConfigError("--via", "is not a publish path", value=opts.via, fix=f"use {VIA}")
    bin_dir = find_engine(opts.engine or "")
    stats = EngineStats()
    async with EmbeddedNats() as broker:
        console.print(f"broker: nats-server {broker.pid} started for the demo")
        with tempfile.TemporaryDirectory(prefix="eventbus-demo-engine-") as tmp:
            data_dir = Path(tmp)
            install(data_dir / "plugins")
            port = free_port()
            config = data_dir / "app.yaml"
            config.write_text(yaml.safe_dump(app_config(opts, broker.url, port), sort_keys=False))
            nc = await nats.connect(broker.url)
            try:
                await nc.subscribe(DERIVED, cb=stats.on_derived)
                await nc.flush()
                async with EngineProcess(bin_dir, config, data_dir) as engine:
                    await engine.wait_listening(port)
                    console.print(f"engine: cmd/server {engine.pid} from {bin_dir}")
                    plugins = ", ".join(map(str, engine.plugin_pids)) or "not found"
                    console.print(f"plugin process {plugins}; HTTP on 127.0.0.1:{port}")
                    await _run(
                        opts, stats, engine=engine, port=port, js=nc.jetstream(), console=console
                    )
                    await wait_settled(opts, broker.url, stats, stats.started + opts.timeout)
                    stats.engine_exit = await engine.stop()
            finally:
                await nc.close()
    return stats


async def _run(
    opts: DemoOptions,
    stats: EngineStats,
    *,
    engine: EngineProcess,
    port: int,
    js: JetStreamContext,
    console: Console,
) -> None:
    by_http, direct = split(opts)

    async def publish() -> None:
        try:
            async with asyncio.TaskGroup() as group:
                if by_http:
                    group.create_task(publish_http(port, by_http, stats))
                if direct:
                    group.create_task(publish_direct(js, direct, max(1, opts.batch), stats))
        except BaseExceptionGroup as failed:
            raise _first(failed) from None

    stats.started = time.monotonic()
    publisher = asyncio.create_task(publish())
    with progress_bar(console) as progress:
        await watch(
            progress,
            stats,
            publisher,
            total=opts.count,
            deadline=stats.started + opts.timeout,
            received="derived",
            check=engine.check_running,
        )
    stats.finished = time.monotonic()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure in a (nested) task group, to report as one line."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def engine_summary(stats: EngineStats) -> dict[str, Any]:
    return {
        **summary(stats),
        "published_http": stats.published_http,
        "published_direct": stats.published_direct,
    }


LABELS = {
    "published_http": "published via HTTP (POST /orders, ingest pipeline)",
    "published_direct": "published straight to JetStream",
    "delivered": "derived (trigger pipeline, step.eventbus.publish)",
    "acked": "acked",
    "redelivered": "redelivered",
    "msg_per_s": "msg/s (first publish to last derived event)",
    "p50_ms": "latency p50 (ms, publish to derived event)",
    "p99_ms": "latency p99 (ms)",
}
