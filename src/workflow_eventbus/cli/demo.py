"""``demo``: the whole path an engine takes, on this machine, in a few seconds.

Starts a broker if none is given (an embedded nats-server, or a private
PostgreSQL for ``--provider pgchannel``), launches the plugin process through the
host harness, creates broker/stream/consumer modules and the subscribe trigger
over gRPC, publishes ``--count`` events through ``step.eventbus.publish`` and
receives every one through TriggerWorkflow. Exits 0 only when every event was
delivered and acknowledged.

With ``--engine [DIR]`` the same events go through the real workflow engine
instead: cmd/server (from DIR, else $WORKFLOW_ENGINE_BIN_DIR, else the
``interop/build.sh`` cache) runs an app with an HTTP ingest route and a subscribe
trigger pipeline that publishes a derived event for each one (cli/demo_engine.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core.errors import ConfigError, EventbusError
from ..core.signals import EXIT_SIGTERM, cancel_on_sigterm
from ..devservers import DEV_SERVERS
from ..devservers.host import PluginHost
from .demo_engine import LABELS as ENGINE_LABELS
from .demo_engine import VIA, engine_summary, run_engine_demo
from .demo_run import (
    DemoOptions,
    DemoStats,
    broker_dsn,
    progress_bar,
    publish_all,
    setup,
    summary,
    wait_settled,
    watch,
)

# The engine demo starts its own nats-server (the built-in engine modules need one too).
ENGINE_DEMO_PROVIDER = "nats"

LABELS = {
    "published": "published (step.eventbus.publish)",
    "delivered": "delivered (TriggerWorkflow)",
    "acked": "acked",
    "redelivered": "redelivered",
    "msg_per_s": "msg/s (publish to last delivery)",
    "p50_ms": "latency p50 (ms)",
    "p99_ms": "latency p99 (ms)",
}


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
        "--provider",
        choices=list(DEV_SERVERS),
        default="nats",
        help="broker (nats; also pgchannel, kafka)",
    )
    parser.add_argument("--dsn", default="", help="use this broker instead of starting one")
    parser.add_argument(
        "--max-in-flight", type=int, default=32, help="concurrent TriggerWorkflow calls (32)"
    )
    parser.add_argument(
        "--fetch-batch", type=int, default=0, help="messages per fetch (0: library default)"
    )
    parser.add_argument(
        "--engine",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="run through the real engine: DIR holds cmd/server's `server` binary "
        "(default: $WORKFLOW_ENGINE_BIN_DIR, else where `bash interop/build.sh` builds it)",
    )
    parser.add_argument(
        "--via",
        choices=VIA,
        default=None,
        help="with --engine: publish through the HTTP route, straight to JetStream, "
        "or half each (both)",
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
        engine=args.engine,
        via=args.via or "both",
    )
    console = Console(stderr=args.json)
    try:
        _check_options(args)
        if opts.engine is None:
            stats = asyncio.run(cancel_on_sigterm(run_demo(opts, console)))
            result, labels = summary(stats), LABELS
            title = f"workflow-plugin-eventbus demo ({opts.provider})"
        else:
            engine_stats = asyncio.run(cancel_on_sigterm(run_engine_demo(opts, console)))
            result, labels = engine_summary(engine_stats), ENGINE_LABELS
            title = "workflow-plugin-eventbus demo (nats, through cmd/server)"
            if engine_stats.engine_exit:
                console.print(f"[yellow]cmd/server exited with code {engine_stats.engine_exit}")
    except EventbusError as exc:
        # One line however wide the terminal; the message is text, not markup.
        console.print(f"[red]demo failed:[/red] {escape(str(exc))}", soft_wrap=True)
        return 1
    except asyncio.CancelledError:
        console.print("demo stopped by SIGTERM; the servers it started are stopped")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        console.print("demo stopped by Ctrl-C; the servers it started are stopped")
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        console.print(_table(result, title, labels))
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
            publisher = asyncio.create_task(publish_all(host, step, opts, stats))
            with progress_bar(console) as progress:
                await watch(progress, stats, publisher, total=opts.count, deadline=deadline)
            stats.finished = time.monotonic()
            await wait_settled(opts, dsn, stats, deadline)
    return stats


def _check_options(args: argparse.Namespace) -> None:
    """--engine runs its own nats-server; --via only means something with it."""
    if args.engine is None:
        if args.via is not None:
            raise ConfigError("--via", "only applies to the engine demo", fix="add --engine")
        return
    if args.provider != ENGINE_DEMO_PROVIDER or args.dsn:
        raise ConfigError(
            "--engine",
            "runs on a nats-server it starts itself",
            fix="drop --provider and --dsn, or drop --engine",
        )


def _table(result: dict[str, Any], title: str, labels: dict[str, str]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in labels.items():
        table.add_row(label, str(result[key]))
    return table
