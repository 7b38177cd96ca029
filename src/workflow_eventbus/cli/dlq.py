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
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .._proto import eventbus_pb2 as pb
from ..core.config import decode
from ..core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ..core.defaults import DEFAULT_DEAD_LETTER_LIMIT
from ..core.errors import ConfigError, EventbusError
from ..core.names import canonical_module_type
from ..engine.bus import EventBus
from ..engine.dlq import open_store, replay
from ..providers import provider_for_url, runtime_names, spec_for

BROKER_TYPE = "eventbus.broker"


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
        _connection_args(action)
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


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="", help="nats://... or postgresql://...")
    parser.add_argument("--dsn", default="", help="alias of --url")
    parser.add_argument("--provider", choices=runtime_names(), default="")
    parser.add_argument("--schema", default="", help="pgchannel schema")
    parser.add_argument("--config", default="", help="an app config with an eventbus.broker")
    parser.add_argument("--broker", default="", help="which eventbus.broker of --config")


def run(ns: argparse.Namespace) -> int:
    if not getattr(ns, "dlq_command", None):
        print("usage: workflow-plugin-eventbus dlq {list,replay} [options]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(ns))
    except EventbusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cluster_from_args(ns: argparse.Namespace) -> tuple[str, pb.ClusterConfig]:
    """(broker name, its ClusterConfig) from the flags or the app config."""
    url = ns.url or ns.dsn
    if ns.config:
        name, cluster = _from_app_config(Path(ns.config), ns.broker)
        if url:
            cluster.dsn = url
    else:
        if not url:
            raise ConfigError(
                "--url",
                "is required without --config",
                fix="pass --url nats://host:4222, --dsn postgresql://... or --config app.yaml",
            )
        name, cluster = "dlq", pb.ClusterConfig(dsn=url)
    if ns.provider:
        cluster.provider = ns.provider
    spec = spec_for(cluster.provider) if cluster.provider else provider_for_url(cluster.dsn)
    spec.fill_defaults(cluster)  # where the server runs: declared only
    if ns.schema:
        cluster.schema = ns.schema
    return name, cluster


def _from_app_config(path: Path, wanted: str) -> tuple[str, pb.ClusterConfig]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            "--config", f"cannot read the app config: {exc}", value=str(path)
        ) from exc
    modules = document.get("modules") if isinstance(document, dict) else None
    brokers = [
        m
        for m in modules or []
        if isinstance(m, dict) and canonical_module_type(str(m.get("type", ""))) == BROKER_TYPE
    ]
    if wanted:
        brokers = [m for m in brokers if m.get("name") == wanted]
    if len(brokers) != 1:
        found = "none" if not brokers else ", ".join(str(m.get("name")) for m in brokers)
        raise ConfigError(
            "--broker",
            f"{path} must have exactly one matching eventbus.broker module (found: {found})",
            value=wanted or None,
            fix="pass --broker NAME",
        )
    module = brokers[0]
    name = str(module.get("name") or "bus")
    cluster = decode(
        pb.ClusterConfig, module.get("config") or {}, setting=f'{BROKER_TYPE} "{name}"'
    )
    return name, cluster


async def _run(ns: argparse.Namespace) -> int:
    name, cluster = cluster_from_args(ns)
    bus = EventBus()
    broker = bus.create_module(BROKER_TYPE, name, cluster)
    try:
        await broker.start()
        provider = bus.provider(name)
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
    finally:
        await bus.close()


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
