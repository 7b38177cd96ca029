"""``tail SUBJECT``: print the messages of a subject as they are published.

Reads through an ephemeral consumer of the stream that captures SUBJECT (a
subject or a pattern such as ``orders.>``; ``--stream`` names the stream when
several could): it is created when the command starts, acknowledges what it
printed, and is removed when the command ends, by ``--count``, Ctrl-C or
SIGTERM (exit 0). Should the process be killed outright, the broker drops it
after it was idle for a short while (NATS), or the next ``tail`` does
(pgchannel). Durable consumers are never touched. By default only new messages
are printed; ``--from-start`` first prints every stored one, ``--last N`` the
newest N stored. One line per message, ``--json``: one JSON object per line.

    workflow-plugin-eventbus tail 'orders.>' --url nats://127.0.0.1:4222 --last 10
    workflow-plugin-eventbus tail orders.created --config app.yaml --from-start --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from typing import Any

from ..core.errors import ConfigError, EventbusError
from ..core.subjects import subject_matches, validate_subject
from ..providers.base import AckAction, Delivery, HasEphemeralConsumers, Provider, rfc3339
from ..providers.capabilities import require_ephemeral, require_status
from ._connect import connected, connection_args, error_line, run_command

IDLE = 30.0  # seconds a consumer left behind by a killed tail survives
KEEP_EVERY = IDLE / 3
FETCH_WAIT = 1.0  # seconds per fetch: how soon a stopped tail notices nothing
BATCH = 100


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "tail",
        help="print the messages of a subject as they arrive (ephemeral consumer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subject", metavar="SUBJECT", help="a subject or pattern (orders.>)")
    parser.add_argument(
        "--stream",
        default="",
        help="the stream to read (default: the one whose subjects capture SUBJECT)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-start", action="store_true", help="every stored message first")
    start.add_argument("--last", type=int, default=0, metavar="N", help="the newest N stored first")
    parser.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    connection_args(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    return run_command(_run(ns), stopped=0)


async def _run(ns: argparse.Namespace) -> int:
    validate_subject(ns.subject, setting="SUBJECT", wildcards=True)
    for flag, value in (("--last", ns.last), ("--count", ns.count)):
        if value < 0:
            raise ConfigError(flag, "must be zero or more", value=value)
    async with connected(ns, default_name="tail") as provider:
        readers = require_ephemeral(provider)
        stream = ns.stream or await stream_for(provider, ns.subject)
        name = await readers.create_ephemeral(
            stream, ns.subject, idle=IDLE, from_start=ns.from_start, last=ns.last
        )
        try:
            print(
                f"tail: {ns.subject} on stream {stream} (consumer {name}, removed on exit); "
                "Ctrl-C stops",
                file=sys.stderr,
                flush=True,
            )
            await _follow(provider, readers, stream, name, ns)
        finally:
            await _remove(readers, stream, name)
    return 0


async def _remove(readers: HasEphemeralConsumers, stream: str, name: str) -> None:
    """Delete the consumer; when that fails, say so without hiding why the tail ended."""
    try:
        await readers.delete_ephemeral(stream, name)
    except EventbusError as exc:
        print(
            f"warning: consumer {name} of stream {stream} was not removed ({error_line(exc)}); "
            f"the broker (nats) or the next tail (pgchannel) removes it after {IDLE:g}s idle",
            file=sys.stderr,
        )


async def stream_for(provider: Provider, subject: str) -> str:
    """The one stream whose subjects capture ``subject`` (a pattern's wildcards are
    matched as if they were plain tokens)."""
    streams = await require_status(provider).stream_status()
    found = [s.name for s in streams if any(subject_matches(p, subject) for p in s.subjects)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(
            "--stream",
            f"several streams capture {subject!r}: {', '.join(found)}",
            fix="pass --stream NAME",
        )
    known = "; ".join(f"{s.name} ({', '.join(s.subjects)})" for s in streams) or "none"
    raise ConfigError(
        "SUBJECT",
        f"no stream of eventbus.broker {provider.broker_name!r} captures it (streams: {known})",
        value=subject,
        fix="tail a subject one of these streams captures, or pass --stream NAME",
    )


async def _follow(
    provider: Provider,
    readers: HasEphemeralConsumers,
    stream: str,
    name: str,
    ns: argparse.Namespace,
) -> None:
    loop = asyncio.get_running_loop()
    keep_at = loop.time() + KEEP_EVERY
    printed = 0
    while not ns.count or printed < ns.count:
        want = BATCH if not ns.count else min(BATCH, ns.count - printed)
        deliveries = await provider.fetch(stream, name, want, FETCH_WAIT)
        for delivery in deliveries:
            print(_line(delivery, as_json=ns.json), flush=True)
        printed += len(deliveries)
        if deliveries:
            await provider.settle([d.ack_token for d in deliveries], AckAction.ACK)
        if loop.time() >= keep_at:
            await readers.keep_ephemeral(stream, name)
            keep_at = loop.time() + KEEP_EVERY
    await provider.confirm()  # the acks reach the broker before the consumer goes


def _line(delivery: Delivery, *, as_json: bool) -> str:
    try:
        text: str | None = delivery.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if as_json:
        row: dict[str, Any] = {
            "stream": delivery.stream,
            "sequence": delivery.sequence,
            "subject": delivery.subject,
            "published_at": rfc3339(delivery.published_at),
            "headers": dict(delivery.headers),
            "delivery_count": delivery.delivery_count,
        }
        if text is not None:
            row["data"] = text
        else:
            row["data_base64"] = base64.b64encode(delivery.payload).decode("ascii")
        return json.dumps(row, sort_keys=True)
    headers = " ".join(f"{k}={v}" for k, v in sorted(delivery.headers.items()))
    body = (
        text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        if text is not None
        else "base64:" + base64.b64encode(delivery.payload).decode("ascii")
    )
    head = f"[{delivery.stream} #{delivery.sequence}] {delivery.subject}"
    return (
        f"{head} {rfc3339(delivery.published_at)}"
        + (f" {headers}" if headers else "")
        + f": {body}"
    )
