"""What the operator commands share: where the broker is, connecting, one-line errors.

A command finds its broker like the plugin does: ``--url``/``--dsn`` (with
``--provider``, guessed from the URL scheme when omitted) or the
``eventbus.broker`` module of an app config (``--config app.yaml [--broker
NAME]``). From an app config, ``${VAR}`` and ``${env:VAR}`` in the broker's
settings are replaced from this process's environment as the engine would;
without a ``dsn`` the URL comes from ``EVENTBUS_<NAME>_URI`` or ``NATS_URL``
like at runtime. It then connects through an :class:`EventBus` with that one
broker module, so every setting means what it means to the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .._proto import eventbus_pb2 as pb
from ..core.config import decode, parse_duration, to_duration
from ..core.errors import ConfigError, EventbusError, redact
from ..core.names import BROKER, canonical_module_type
from ..core.signals import EXIT_SIGTERM, cancel_on_sigterm
from ..engine.bus import EventBus
from ..providers import provider_for_url, runtime_names, spec_for
from ..providers.base import Provider

BROKER_TYPE = BROKER
EXIT_INTERRUPT = 128 + signal.SIGINT

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE = re.compile(r"(?:env:)?([A-Za-z_][A-Za-z0-9_]*)")


def connection_args(parser: argparse.ArgumentParser) -> None:
    """The flags that say which broker to use (every operator command has them)."""
    parser.add_argument("--url", default="", help="nats://... or postgresql://...")
    parser.add_argument("--dsn", default="", help="alias of --url")
    parser.add_argument("--provider", choices=runtime_names(), default="")
    parser.add_argument("--schema", default="", help="pgchannel schema")
    parser.add_argument("--config", default="", help="an app config with an eventbus.broker")
    parser.add_argument("--broker", default="", help="which eventbus.broker of --config")
    parser.add_argument(
        "--connect-timeout",
        default="",
        metavar="DURATION",
        help='how long to wait for the broker, e.g. "5s" (default: the broker\'s '
        "connect_timeout, else 10s)",
    )


def cluster_from_args(
    ns: argparse.Namespace, *, default_name: str = "cli"
) -> tuple[str, pb.ClusterConfig]:
    """(broker name, its ClusterConfig) from the flags or the app config; a broker given
    by URL is named ``default_name``."""
    url = ns.url or ns.dsn
    if ns.config:
        name, cluster = from_app_config(Path(ns.config), ns.broker, url_given=bool(url))
        if url:
            cluster.dsn = url
    else:
        if not url:
            raise ConfigError(
                "--url",
                "is required without --config",
                fix="pass --url nats://host:4222, --dsn postgresql://... or --config app.yaml",
            )
        name, cluster = default_name, pb.ClusterConfig(dsn=url)
    if ns.provider:
        cluster.provider = ns.provider
    spec = spec_for(cluster.provider) if cluster.provider else provider_for_url(cluster.dsn)
    spec.fill_defaults(cluster)  # where the server runs: declared only
    if ns.schema:
        cluster.schema = ns.schema
    timeout = getattr(ns, "connect_timeout", "")
    if timeout:
        cluster.connect_timeout.CopyFrom(
            to_duration(parse_duration(timeout, setting="--connect-timeout"))
        )
    return name, cluster


def from_app_config(
    path: Path, wanted: str, *, url_given: bool = False
) -> tuple[str, pb.ClusterConfig]:
    """The ``eventbus.broker`` module of an app config (``wanted``, or the only one)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(
            "--config", f"cannot read the app config: {reason}", value=str(path)
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
    where = f'{BROKER_TYPE} "{name}"'
    raw = module.get("config") or {}
    if isinstance(raw, dict):
        skip = ("dsn",) if url_given else ()
        raw = {
            key: value if key in skip else expand(value, os.environ, f"{where}: {key}")
            for key, value in raw.items()
        }
    return name, decode(pb.ClusterConfig, raw, setting=where)


def expand(value: Any, environ: Mapping[str, str], setting: str) -> Any:
    """``value`` with ``${VAR}`` / ``${env:VAR}`` replaced from ``environ``, in every
    string inside it; a reference this process cannot resolve is a ConfigError."""
    if isinstance(value, str):
        return _REFERENCE.sub(lambda m: _resolve(m.group(1), environ, setting), value)
    if isinstance(value, dict):
        return {k: expand(v, environ, f"{setting}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, environ, f"{setting}[{i}]") for i, v in enumerate(value)]
    return value


def _resolve(reference: str, environ: Mapping[str, str], setting: str) -> str:
    variable = _VARIABLE.fullmatch(reference.strip())
    if variable is None:
        raise ConfigError(
            setting,
            f"refers to the secret ${{{reference}}}, which only the engine can resolve",
            fix="pass --url (or --dsn) with the broker's address",
        )
    found = environ.get(variable.group(1))
    if found is None:
        raise ConfigError(
            setting,
            f"refers to ${{{variable.group(1)}}}, which is not set in this environment",
            fix=f"export {variable.group(1)}=... or pass --url",
        )
    return found


@asynccontextmanager
async def connected(
    ns: argparse.Namespace, *, default_name: str = "cli"
) -> AsyncIterator[Provider]:
    """The connected provider of the broker the flags name; closed on exit."""
    name, cluster = cluster_from_args(ns, default_name=default_name)
    bus = EventBus()
    broker = bus.create_module(BROKER_TYPE, name, cluster)
    try:
        await broker.start()
        yield bus.provider(name)
    finally:
        await bus.close()


def error_line(exc: BaseException) -> str:
    """``error: ...`` on one line, secrets hidden."""
    return "error: " + " ".join(redact(str(exc)).split())


def run_command(main: Coroutine[Any, Any, int], *, stopped: int | None = None) -> int:
    """Run a command's coroutine: SIGTERM and Ctrl-C cancel it (its ``finally`` blocks
    run), an EventbusError is one line on stderr and exit code 1.

    A stopped command exits with ``stopped``, else 128 + the signal's number."""
    try:
        return asyncio.run(cancel_on_sigterm(main))
    except EventbusError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return EXIT_SIGTERM if stopped is None else stopped
    except KeyboardInterrupt:
        return EXIT_INTERRUPT if stopped is None else stopped
