"""``status``: the streams and consumers of a broker, with their counts.

For each stream: subjects, retention, messages, bytes, first and last
sequence, consumers and when its newest message was published. For each
consumer: its filter, messages pending (not delivered yet), ack-pending
(delivered, not acknowledged), redelivered (of those, delivered more than
once), dead letters (in the shared dead-letter stream, counted up to
``--dead-letter-limit``) and its last activity. Everything comes from the
broker as it is now; nothing is changed.

    workflow-plugin-eventbus status --url nats://127.0.0.1:4222
    workflow-plugin-eventbus status --config app.yaml --stream ORDERS --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from ..core.deadletter import DEAD_LETTER_STREAM
from ..core.defaults import DEFAULT_DEAD_LETTER_COUNT
from ..core.errors import NotFoundError, redact
from ..providers.base import ConsumerStatus, HasDeadLetters, Provider, StreamStatus, rfc3339
from ..providers.capabilities import require_status
from ._connect import connected, connection_args, run_command


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="streams and consumers: messages, pending, ack-pending, redelivered, dead letters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connection_args(parser)
    parser.add_argument("--stream", default="", help="only this stream and its consumers")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    parser.add_argument(
        "--dlq-stream",
        default=DEAD_LETTER_STREAM,
        help=f"where dead letters are counted (default {DEAD_LETTER_STREAM})",
    )
    parser.add_argument(
        "--dead-letter-limit",
        type=int,
        default=DEFAULT_DEAD_LETTER_COUNT,
        metavar="N",
        help=f"count at most N dead letters (default {DEFAULT_DEAD_LETTER_COUNT}); more shows N+",
    )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    return run_command(_run(ns))


async def _run(ns: argparse.Namespace) -> int:
    async with connected(ns, default_name="status") as provider:
        report = await collect(
            provider, only=ns.stream, dlq_stream=ns.dlq_stream, limit=ns.dead_letter_limit
        )
    if ns.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print_tables(report)
    return 0


async def collect(
    provider: Provider, *, only: str = "", dlq_stream: str = DEAD_LETTER_STREAM, limit: int
) -> dict[str, Any]:
    """The status of the broker behind ``provider`` as plain data (what ``--json`` prints)."""
    status = require_status(provider)
    streams = await status.stream_status()
    if only:
        streams = [s for s in streams if s.name == only]
        if not streams:
            raise NotFoundError(
                f'--stream: stream "{only}" does not exist on eventbus.broker '
                f'"{provider.broker_name}"; leave out --stream to list every stream'
            )
    consumers: list[ConsumerStatus] = []
    for stream in streams:
        try:
            consumers += await status.consumer_status(stream.name)
        except NotFoundError:
            continue  # deleted since the listing
    letters, capped = await _dead_letters(provider, dlq_stream, limit)
    return {
        "broker": provider.broker_name,
        "provider": provider.name,
        "url": redact(provider.url),
        "dead_letter_stream": dlq_stream,
        "dead_letters_capped": capped,
        "streams": [_stream_row(s) for s in streams],
        "consumers": [
            _consumer_row(c, letters[(c.stream, c.name)] if letters is not None else None)
            for c in consumers
        ],
    }


async def _dead_letters(
    provider: Provider, dlq_stream: str, limit: int
) -> tuple[Counter[tuple[str, str]] | None, bool]:
    """Dead letters per (stream, consumer), and whether ``limit`` cut the count short;
    None when the provider cannot list dead letters."""
    if not isinstance(provider, HasDeadLetters):
        return None, False
    store = await provider.dead_letters(dlq_stream)
    try:
        # One more than shown tells whether there are more than ``limit``.
        letters = await store.list(limit=max(limit, 0) + 1)
    except NotFoundError:
        return Counter(), False  # no dead-letter stream: nothing was dead-lettered
    finally:
        await store.close()
    capped = len(letters) > limit
    return Counter((x.stream, x.consumer) for x in letters[:limit]), capped


def _time(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment is not None else None


def _stream_row(stream: StreamStatus) -> dict[str, Any]:
    row = asdict(stream)
    row["subjects"] = list(stream.subjects)
    row["last_published"] = _time(stream.last_published)
    return row


def _consumer_row(consumer: ConsumerStatus, dead_letters: int | None) -> dict[str, Any]:
    row = asdict(consumer)
    row["last_active"] = _time(consumer.last_active)
    row["dead_letters"] = dead_letters  # None: the provider cannot list dead letters
    return row


def _print_tables(report: dict[str, Any]) -> None:
    # Wide enough for every column when the output goes to a file or a pipe.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
    title = f"{report['url'] or report['broker']} ({report['provider']})"
    streams = Table(title=f"{title}: streams", title_justify="left")
    for header, right in (
        ("STREAM", False),
        ("SUBJECTS", False),
        ("RETENTION", False),
        ("MESSAGES", True),
        ("BYTES", True),
        ("FIRST SEQ", True),
        ("LAST SEQ", True),
        ("CONSUMERS", True),
        ("LAST MESSAGE", False),
    ):
        streams.add_column(header, justify="right" if right else "left")
    for s in report["streams"]:
        streams.add_row(
            s["name"],
            ", ".join(s["subjects"]),
            s["retention"],
            str(s["messages"]),
            str(s["bytes"]),
            str(s["first_sequence"]),
            str(s["last_sequence"]),
            str(s["consumers"]),
            s["last_published"] or "-",
        )
    console.print(streams if report["streams"] else f"{title}: no streams")
    if not report["consumers"]:
        console.print("no consumers")
        return
    consumers = Table(title=f"{title}: consumers", title_justify="left")
    for header, right in (
        ("STREAM", False),
        ("CONSUMER", False),
        ("FILTER", False),
        ("PENDING", True),
        ("ACK PENDING", True),
        ("REDELIVERED", True),
        ("DEAD LETTERS", True),
        ("LAST ACTIVE", False),
    ):
        consumers.add_column(header, justify="right" if right else "left")
    capped = "+" if report["dead_letters_capped"] else ""
    for c in report["consumers"]:
        dead = (
            "-"
            if c["dead_letters"] is None
            else f"{c['dead_letters']}{capped}"  # capped: any consumer may have more
        )
        consumers.add_row(
            c["stream"],
            c["name"],
            c["filter_subject"] or "(all)",
            str(c["pending"]),
            str(c["ack_pending"]),
            str(c["redelivered"]),
            dead,
            c["last_active"] or "-",
        )
    console.print(consumers)
