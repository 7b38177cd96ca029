"""``infra --config APP_YAML [--out FILE] [--check]``: the infrastructure of the app's brokers.

Writes FILE (default ``eventbus.infra.yaml`` next to the app config), an app
config fragment for the app's ``imports:``: the ``infra.*`` modules ``wfctl infra
plan/apply`` reads for each broker's ``deploy_target`` (an App Platform NATS
service for the DigitalOcean provider plugin) and the ``sidecars:`` that
``wfctl deploy k8s generate`` reads (``--k8s-sidecar``). Files for other tools go
into the folder ``<FILE without .yaml>.files/``: Kubernetes manifests, nats-server
configs and systemd units, the pgchannel migration command. What is left to the
operator is listed in FILE's header and printed. docs/iac.md has the flow per target.

The same app config gives the same bytes. ``--check`` writes nothing and exits 1
when FILE or a file of its folder is missing, stale or left over (CI).

    workflow-plugin-eventbus infra --config app.yaml
    workflow-plugin-eventbus infra --config app.yaml --check
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .._proto import eventbus_pb2 as pb
from ..core.config import decode
from ..core.defaults import DEFAULT_DO_IAC_PROVIDER, DEFAULT_INFRA_OUT
from ..core.errors import ConfigError, EventbusError
from ..core.names import BROKER, STREAM, canonical_module_type

if TYPE_CHECKING:
    from ..engine import iac


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "infra",
        help="write the infra.* modules and files that deploy the app's brokers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", required=True, metavar="APP_YAML", help="app config")
    parser.add_argument(
        "--out", "-o", default="", metavar="FILE", help=f"default {DEFAULT_INFRA_OUT}"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when FILE is stale")
    parser.add_argument(
        "--do-provider",
        default=DEFAULT_DO_IAC_PROVIDER,
        metavar="NAME",
        help="the iac.provider module App Platform modules name (default %(default)s)",
    )
    parser.add_argument(
        "--k8s-sidecar",
        action="store_true",
        help="kubernetes: NATS as a sidecar of the app pod instead of a StatefulSet",
    )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..engine import iac  # on use: the plugin process never needs it

    app = Path(ns.config)
    out = Path(ns.out) if ns.out else app.parent / DEFAULT_INFRA_OUT
    try:
        brokers = read_brokers(app)
        options = iac.Options(do_provider=ns.do_provider, k8s_sidecar=ns.k8s_sidecar)
        generated = iac.generate(brokers, options)
        wanted = render_all(app, out, generated)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"error: --config: cannot read {app}: {reason}", file=sys.stderr)
        return 1
    except (EventbusError, yaml.YAMLError) as exc:
        print(f"error: {app}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    folder = files_folder(out)
    present = {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
    stale = [p for p, text in wanted.items() if _read(p) != text]
    extra = sorted(present - set(wanted))
    if ns.check:
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        for path in extra:
            print(f"left over: {path}", file=sys.stderr)
        if stale or extra:
            print(f"{out}: stale; rerun without --check to regenerate", file=sys.stderr)
            return 1
        print(f"{out}: up to date ({len(wanted)} file(s))")
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path], encoding="utf-8")
    for path in extra:
        path.unlink()
    print(f"{out}: {len(stale)} of {len(wanted)} file(s) written, {len(extra)} removed")
    for note in generated.notes:
        print(f"note: {note}")
    return 0


def files_folder(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".yaml").removesuffix(".yml") + ".files")


def read_brokers(app: Path) -> list[iac.Broker]:
    """The app's brokers (old type names too) with the streams that name each."""
    from ..engine import iac

    root = yaml.safe_load(app.read_text(encoding="utf-8")) or {}
    modules = root.get("modules") if isinstance(root, dict) else None
    configs: dict[str, pb.ClusterConfig] = {}
    streams: list[pb.StreamConfig] = []
    for module in modules if isinstance(modules, list) else []:
        if not isinstance(module, dict):
            continue
        kind = canonical_module_type(str(module.get("type") or ""))
        name = str(module.get("name") or "")
        where = f'{kind} "{name}"'
        if kind == BROKER:
            configs[name] = decode(pb.ClusterConfig, module.get("config") or {}, setting=where)
        elif kind == STREAM:
            streams.append(decode(pb.StreamConfig, module.get("config") or {}, setting=where))
    if not configs:
        raise ConfigError("modules", "declare no eventbus.broker", fix="pass the app's config")
    only = next(iter(configs)) if len(configs) == 1 else ""
    return [
        iac.Broker(name, cfg, tuple(s for s in streams if (s.broker_ref or only) == name))
        for name, cfg in configs.items()
    ]


def render_all(app: Path, out: Path, generated: iac.Generated) -> dict[Path, str]:
    """Every file to write, by path: the imports file first, then its folder's."""
    from ..engine.iac import render

    folder = files_folder(out)
    # Both paths relative (never absolute: the same bytes on every machine).
    source = Path(os.path.relpath(app.resolve(), out.resolve().parent)).as_posix()
    imported = Path(os.path.relpath(out.resolve(), app.resolve().parent)).as_posix()
    header = [
        f"Generated by `workflow-plugin-eventbus infra --config {source}`; do not edit:",
        "rerun it after changing the brokers (--check exits 1 while this is stale).",
        f"Pull it into the app config with:  imports: [{imported}]",
    ]
    if generated.files:
        header += ["", f"Files for other tools, in {folder.name}/:"]
        header += [f"  {f.path}  ({f.used_by})" for f in generated.files]
    if generated.notes:
        header += ["", "Left to the operator:"]
        for note in generated.notes:
            header += textwrap.wrap(note, 86, initial_indent="- ", subsequent_indent="  ")
    body: dict[str, Any] = {
        "modules": [{"name": m.name, "type": m.type, "config": m.config} for m in generated.modules]
    }
    if generated.sidecars:
        body["sidecars"] = generated.sidecars
    text = "".join(f"# {line}".rstrip() + "\n" for line in header) + render.dump(body)
    wanted = {out: text}
    wanted.update({folder / f.path: f.text for f in generated.files})
    return wanted


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
