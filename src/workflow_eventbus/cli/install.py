"""``install --plugins-dir DIR``: lay out a plugin directory the engine can load.

    DIR/workflow-plugin-eventbus/
        workflow-plugin-eventbus   executable sh wrapper: exec <this python> -m workflow_eventbus.cli.main
        plugin.json
        plugin.contracts.json

The wrapper ``exec``s the interpreter so the engine's signals (SIGTERM, SIGKILL)
reach Python itself, and uses the absolute path of the interpreter running this
command, so the plugin runs in the same environment (venv) it was installed from.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.names import PLUGIN_NAME
from ..plugin.contracts import contracts_json, plugin_json

WRAPPER = """\
#!/bin/sh
# workflow-plugin-eventbus launcher, written by `workflow-plugin-eventbus install`.
# The engine runs this file with no arguments; exec hands the process to Python.
exec {python} -m workflow_eventbus.cli.main "$@"
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "install",
        help="write a ready plugin directory into an engine's plugins dir",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--plugins-dir",
        required=True,
        help="the engine's plugins directory (for `server -data-dir D` it is D/plugins)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter the wrapper execs (default: the one running this command)",
    )
    parser.set_defaults(func=_run)


def install(plugins_dir: str | Path, python: str = sys.executable) -> Path:
    """Write the plugin directory; returns its path. Idempotent (files are replaced)."""
    interpreter = Path(python).absolute()
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        raise ConfigError(
            "--python", "is not an executable file", value=str(python), fix="pass a Python path"
        )
    target = Path(plugins_dir).absolute() / PLUGIN_NAME
    target.mkdir(parents=True, exist_ok=True)
    launcher = target / PLUGIN_NAME
    _write(launcher, WRAPPER.format(python=shlex.quote(str(interpreter))))
    launcher.chmod(0o755)
    _write(target / "plugin.json", dump_json(plugin_json()))
    _write(target / "plugin.contracts.json", dump_json(contracts_json()))
    return target


def dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _run(args: argparse.Namespace) -> int:
    target = install(args.plugins_dir, args.python)
    print(f"installed {PLUGIN_NAME} into {target}")
    print(f"  launcher: {target / PLUGIN_NAME}")
    print(
        "  run the engine with this plugins dir, e.g. `server -config app.yaml -data-dir <parent>`"
    )
    return 0
