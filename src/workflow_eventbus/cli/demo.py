"""``demo``: the whole path an engine takes, on this machine, in a few seconds.

Starts a broker if none is given (an embedded nats-server, or a private
PostgreSQL for ``--provider pgchannel``), launches the plugin process through the
host harness, creates broker/stream/consumer modules and the subscribe trigger
over gRPC, publishes ``--count`` events through ``step.eventbus.publish`` and
receives every one through TriggerWorkflow. Exits 0 only when every event was
delivered and acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.errors import EventbusError
from ..core.signals import EXIT_SIGTERM, cancel_on_sigterm
from ..devservers import DEV_SERVERS
from ..devservers.host import PluginHost
from .demo_run import (
    DemoOptions,
    DemoStats,
    broker_dsn,
    publish_all,
    setup,
    summary,
    wait_settled,
)


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="publish and receive events end to end through the plugin process",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=3000, help="events to publish (3000)")
    parser.add_argument("--batch", type=int, default=250, help="events per publish call (250)")
    parser.add_argument(
        "--provider", choices=list(DEV_SERVERS), default="nats", help="broker (nats)"
    )
    parser.add_argument("--dsn", default="", help="use this broker instead of starting one")
    parser.add_argument(
        "--max-in-flight", type=int, default=32, help="concurrent TriggerWorkflow calls (32)"
    )
    parser.add_argument(
        "--fetch-batch", type=int, default=0, help="messages per fetch (0: library default)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (120 s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        count=max(1, args.count),
        batch=max(1, args.batch),
        provider=args.provider,
        dsn=args.dsn,
        max_in_flight=max(1, args.max_in_flight),
        fetch_batch=max(0, args.fetch_batch),
        timeout=args.timeout,
    )
    console = Console(stderr=args.json)
    try:
        stats = asyncio.run(cancel_on_sigterm(run_demo(opts, console)))
    except EventbusError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    except asyncio.CancelledError:
        console.print("demo stopped by SIGTERM; the servers it started are stopped")
        return EXIT_SIGTERM
    result = summary(stats)
    if args.json:
        print(json.dumps(result))
    else:
        console.print(_table(result, opts))
    ok = result["delivered"] == opts.count and result["acked"] == opts.count
    if not ok:
        console.print("[red]not every event was delivered and acknowledged[/red]")
    return 0 if ok else 1


async def run_demo(opts: DemoOptions, console: Console) -> DemoStats:
    stats = DemoStats()
    async with broker_dsn(opts) as dsn:
        console.print(
            f"broker: {opts.provider} ({'given' if opts.dsn else 'started for the demo'})"
        )
        async with PluginHost(on_trigger=stats.on_trigger) as host:
            console.print(f"plugin process {host.pid}: {host.handshake}")
            step = await setup(host, opts, dsn)
            stats.started = time.monotonic()
            deadline = stats.started + opts.timeout
            with _progress(console) as progress:
                await _publish_and_watch(
                    host, step, opts, stats, progress=progress, deadline=deadline
                )
            stats.finished = time.monotonic()
            await wait_settled(opts, dsn, stats, deadline)
    return stats


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


async def _publish_and_watch(
    host: PluginHost,
    step: str,
    opts: DemoOptions,
    stats: DemoStats,
    *,
    progress: Progress,
    deadline: float,
) -> None:
    published = progress.add_task("published", total=opts.count)
    delivered = progress.add_task("delivered", total=opts.count)
    publisher = asyncio.create_task(publish_all(host, step, opts, stats))
    try:
        while stats.delivered < opts.count and time.monotonic() < deadline:
            if publisher.done() and publisher.exception() is not None:
                break
            progress.update(published, completed=stats.published)
            progress.update(delivered, completed=stats.delivered)
            await asyncio.sleep(0.05)
        progress.update(published, completed=stats.published)
        progress.update(delivered, completed=stats.delivered)
        await publisher
    finally:
        publisher.cancel()


def _table(result: dict[str, Any], opts: DemoOptions) -> Table:
    table = Table(title=f"workflow-plugin-eventbus demo ({opts.provider})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {
        "published": "published (step.eventbus.publish)",
        "delivered": "delivered (TriggerWorkflow)",
        "acked": "acked",
        "redelivered": "redelivered",
        "msg_per_s": "msg/s (publish to last delivery)",
        "p50_ms": "latency p50 (ms)",
        "p99_ms": "latency p99 (ms)",
    }
    for key, label in labels.items():
        table.add_row(label, str(result[key]))
    return table
