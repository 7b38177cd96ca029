"""``manifest``: print or write plugin.json and plugin.contracts.json.

Both files are generated from the same code that answers GetManifest and
GetContractRegistry, so the files on disk never drift from the running plugin.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..plugin.contracts import contracts_json, plugin_json
from .install import dump_json

FILES = {"plugin.json": plugin_json, "plugin.contracts.json": contracts_json}


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "manifest",
        help="print plugin.json and plugin.contracts.json (or --write them)",
        description=__doc__,
    )
    parser.add_argument(
        "--write", action="store_true", help="write the files instead of printing them"
    )
    parser.add_argument("--dir", default=".", help="where --write puts them (default: .)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when the files in --dir differ from what the plugin advertises",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    stale = []
    for name, build in FILES.items():
        text = dump_json(build())
        path = directory / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        elif args.write:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        else:
            print(f"# {name}\n{text}")
    if stale:
        print("stale (run `workflow-plugin-eventbus manifest --write`): " + ", ".join(stale))
        return 1
    return 0
