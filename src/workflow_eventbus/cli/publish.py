"""``publish SUBJECT [DATA|-]``: publish messages and print where the broker stored them.

DATA is the payload as given (UTF-8 text), ``-`` reads it from standard input,
no DATA publishes an empty payload. ``--header K=V`` adds a header
(repeatable), ``--msg-id ID`` sets the id the broker deduplicates by (with
``--count N`` message i gets ``ID-i``), ``--count N`` publishes N copies,
pipelined. Each message prints one line (``--json``: one JSON object) with its
stream and sequence; a message the broker refused prints an ``error:`` line
on stderr and the command exits 1.

    workflow-plugin-eventbus publish orders.created '{"id": 1}' --url nats://127.0.0.1:4222
    echo -n hello | workflow-plugin-eventbus publish orders.note - --config app.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..core.defaults import MAX_BATCH
from ..core.errors import ConfigError
from ..core.subjects import validate_subject
from ..providers.base import OutboundMessage, PublishResult, rfc3339
from ._connect import connected, connection_args, error_line, run_command


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "publish",
        help="publish a message (or --count N of them) to a subject",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("subject", metavar="SUBJECT", help="where to publish, e.g. orders.created")
    parser.add_argument(
        "data", metavar="DATA", nargs="?", default=None, help="the payload; - reads stdin"
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="a message header (repeatable)",
    )
    parser.add_argument("--msg-id", default="", help="deduplication id (ID-1..ID-N with --count)")
    parser.add_argument("--count", type=int, default=1, metavar="N", help="publish N messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    connection_args(parser)
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    return run_command(_run(ns))


def messages(ns: argparse.Namespace, payload: bytes) -> list[OutboundMessage]:
    """The messages the arguments ask for (checked before anything connects)."""
    validate_subject(ns.subject, setting="SUBJECT", wildcards=False)
    if ns.count < 1:
        raise ConfigError("--count", "must be 1 or more", value=ns.count)
    headers: dict[str, str] = {}
    for item in ns.header:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                "--header", "expected KEY=VALUE", value=item, fix="write e.g. --header source=cli"
            )
        headers[key.strip()] = value
    ids = [ns.msg_id] if ns.count == 1 else [f"{ns.msg_id}-{i}" for i in range(1, ns.count + 1)]
    return [
        OutboundMessage(ns.subject, payload, dict(headers), msg_id=ids[i] if ns.msg_id else "")
        for i in range(ns.count)
    ]


def _payload(data: str | None) -> bytes:
    if data is None:
        return b""
    if data == "-":
        return sys.stdin.buffer.read()
    return os.fsencode(data)  # the bytes as given, even when they are not UTF-8


async def _run(ns: argparse.Namespace) -> int:
    outgoing = messages(ns, b"")
    payload = _payload(ns.data)
    for message in outgoing:
        message.payload = payload
    failed = 0
    async with connected(ns, default_name="publish") as provider:
        for start in range(0, len(outgoing), MAX_BATCH):
            batch = outgoing[start : start + MAX_BATCH]
            if len(batch) == 1:
                results: list[PublishResult | Exception] = [await provider.publish(batch[0])]
            else:
                results = await provider.publish_many(batch)
            for message, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    failed += 1
                    print(error_line(result), file=sys.stderr)
                else:
                    _print(message, result, as_json=ns.json)
    return 1 if failed else 0


def _print(message: OutboundMessage, result: PublishResult, *, as_json: bool) -> None:
    if as_json:
        row: dict[str, Any] = {
            "subject": message.subject,
            "stream": result.stream,
            "sequence": result.sequence,
            "acked_at": rfc3339(result.acked_at),
            "duplicate": result.duplicate,
        }
        if message.msg_id:
            row["msg_id"] = message.msg_id
        print(json.dumps(row, sort_keys=True))
        return
    duplicate = " (duplicate: already stored)" if result.duplicate else ""
    print(f"published {message.subject}: stream {result.stream} #{result.sequence}{duplicate}")
