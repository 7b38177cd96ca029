"""``dlq list|replay``: inspect dead letters and republish them to their original subject.

Connects like the plugin does: ``--url``/``--dsn`` (with ``--provider``, guessed
from the URL scheme when omitted) or the ``eventbus.broker`` module of an app
config (``--config app.yaml [--broker NAME]``; the URL then comes from its dsn,
``EVENTBUS_<NAME>_URI`` or ``NATS_URL`` like at runtime).

    workflow-plugin-eventbus dlq list --url nats://127.0.0.1:4222 --stream ORDERS
    workflow-plugin-eventbus dlq replay --config app.yaml --consumer shipper --limit 10
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ..core.defaults import DEFAULT_DEAD_LETTER_LIMIT
from ..engine.dlq import open_store, replay
from ._connect import connected, connection_args, run_command


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dlq",
        help="list or replay dead-lettered messages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="dlq_command", metavar="ACTION")
    for name, text in (
        ("list", "show dead letters: original subject, sequence, delivery count, error"),
        ("replay", "republish dead letters to their original subject, then remove them"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        connection_args(action)
        action.add_argument("--stream", default="", help="only letters from this source stream")
        action.add_argument("--consumer", default="", help="only letters of this consumer")
        action.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_DEAD_LETTER_LIMIT,
            help=f"at most N (default {DEFAULT_DEAD_LETTER_LIMIT})",
        )
        action.add_argument(
            "--dlq-stream",
            default=DEAD_LETTER_STREAM,
            help=f"the dead-letter stream (default {DEAD_LETTER_STREAM})",
        )
        action.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "replay":
            action.add_argument(
                "--sequence",
                type=int,
                action="append",
                default=[],
                help="replay only this dead-letter sequence (repeatable)",
            )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    if not getattr(ns, "dlq_command", None):
        print("usage: workflow-plugin-eventbus dlq {list,replay} [options]", file=sys.stderr)
        return 2
    return run_command(_run(ns))


async def _run(ns: argparse.Namespace) -> int:
    async with connected(ns, default_name="dlq") as provider:
        store = await open_store(provider, ns.dlq_stream)
        try:
            letters = await store.list(stream=ns.stream, consumer=ns.consumer, limit=ns.limit)
            if ns.dlq_command == "list":
                _print_letters(letters, as_json=ns.json)
                return 0
            if ns.sequence:
                letters = [x for x in letters if x.dlq_sequence in set(ns.sequence)]
            return _report_replay(await replay(provider, store, letters), as_json=ns.json)
        finally:
            await store.close()


def _print_letters(letters: list[DeadLetter], *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            print(json.dumps(letter.to_dict(), sort_keys=True))
        return
    if not letters:
        print("no dead letters")
        return
    print(f"{'DLQ SEQ':>8}  {'SUBJECT':<28} {'STREAM/CONSUMER':<28} {'SEQ':>7} {'DELIV':>5}  ERROR")
    for x in letters:
        where = f"{x.stream}/{x.consumer}"
        error = x.error.replace("\n", " ")[:60]
        print(
            f"{x.dlq_sequence:>8}  {x.subject:<28} {where:<28} {x.sequence:>7} "
            f"{x.delivery_count:>5}  {error}"
        )
    print(f"{len(letters)} dead letter(s)")


def _report_replay(results: list[Any], *, as_json: bool) -> int:
    failed = 0
    for result in results:
        letter = result.letter
        if result.error:
            failed += 1
        if as_json:
            row = {"dlq_sequence": letter.dlq_sequence, "subject": letter.subject}
            if result.published is not None:
                row.update(stream=result.published.stream, sequence=result.published.sequence)
            if result.error:
                row["error"] = result.error
            print(json.dumps(row, sort_keys=True))
        elif result.error:
            print(f"dlq {letter.dlq_sequence}: NOT replayed: {result.error}")
        else:
            print(
                f"dlq {letter.dlq_sequence}: replayed to {letter.subject} "
                f"({result.published.stream} #{result.published.sequence})"
            )
    if not as_json:
        print(f"{len(results) - failed} replayed, {failed} failed")
    return 1 if failed else 0
