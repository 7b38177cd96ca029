"""``workflow-plugin-eventbus bench``: the performance scenarios against their raw baselines."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from ..bench.loops import LOOPS, default_loop, run_loop
from ..core.signals import EXIT_SIGTERM


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="measure every plugin path against the raw clients (writes bench/results.json)",
        description=(
            "Start an embedded nats-server (and a private PostgreSQL for the pgchannel rows), "
            "run each scenario and its raw baseline in alternating rounds, print the table "
            "and write the results as JSON."
        ),
    )
    parser.add_argument(
        "--quick", action="store_true", help="short mode for CI (ratios reported, not asserted)"
    )
    parser.add_argument(
        "--rounds", type=int, default=0, help="paired rounds per group (default 5, quick 3)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--seconds", type=float, default=0.0, help="time bound per sample")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GROUP",
        help="run only these groups (repeatable)",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default=default_loop(),
        help="event loop of the bench process (default: uvloop when installed, as the plugin)",
    )
    parser.add_argument(
        "--plugin-loop",
        choices=("default", *LOOPS),
        default="default",
        help="event loop of the plugin process (default: its own choice, uvloop when installed)",
    )
    parser.add_argument(
        "--no-pg", action="store_true", help="skip the pgchannel rows (no PostgreSQL)"
    )
    parser.add_argument(
        "--no-kafka", action="store_true", help="skip the kafka rows (no Kafka broker)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results.json"), help="where to write the JSON"
    )
    engine = parser.add_argument_group(
        "engine bench (--engine)",
        "the same job through cmd/server (ours, its built-in messaging.nats) and FastStream; "
        "--quick is its short mode, --rounds its rounds (default 3, short 1)",
    )
    engine.add_argument(
        "--engine",
        action="store_true",
        help="run the engine bench instead (needs interop/build.sh's binaries; port 4222 free "
        "for the built-in rows)",
    )
    engine.add_argument(
        "--events", type=int, default=0, help="events per burst (default 3000, short 1000)"
    )
    engine.add_argument(
        "--loss-events",
        type=int,
        default=0,
        help="events in each loss row (default 2000, short 1000)",
    )
    engine.add_argument(
        "--down", type=float, default=5.0, help="seconds the consumer is stopped in a loss row"
    )
    engine.add_argument(
        "--replicas",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="replica rows of ours at max_in_flight 16 (repeatable; default 2 and 3, short 2)",
    )
    parser.add_argument(
        "--memory", action="store_true", help="run the plugin memory check instead (long)"
    )
    parser.add_argument(
        "--memory-messages", type=int, default=1_000_000, help="messages for --memory"
    )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..bench import main as bench_main

    try:
        return run_loop(bench_main.main(ns), ns.loop)
    except asyncio.CancelledError:
        print("bench: stopped by SIGTERM; servers it started are stopped", file=sys.stderr)
        return EXIT_SIGTERM
