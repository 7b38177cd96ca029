"""``workflow-plugin-eventbus``: the plugin launcher and the tools around it.

With no arguments it behaves like any go-plugin binary: when the engine runs it
(``WORKFLOW_PLUGIN=workflow-external-plugin-v1`` in the environment) it serves
the plugin; otherwise it tells a person what it is and exits 1.

Subcommands are plain modules with ``add_parser(sub)``; optional ones (written
by other parts of the project) are picked up when their module exists.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from .. import __version__

# Each module provides add_parser(subparsers); the parser it adds sets `func`.
CORE_COMMANDS = ("serve", "install", "manifest", "demo")
OPTIONAL_COMMANDS = ("migrate", "bench", "dlq")


def _command_modules() -> list[str]:
    names = [f"{__package__}.cmd_{name}" for name in CORE_COMMANDS]
    for name in OPTIONAL_COMMANDS:
        module = f"{__package__}.{name}"
        if importlib.util.find_spec(module) is not None:
            names.append(module)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workflow-plugin-eventbus",
        description=(
            "Event bus plugin for the GoCodeAlone workflow engine (NATS JetStream, "
            "PostgreSQL). Run with no arguments by the engine; the subcommands are for people."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        add = getattr(importlib.import_module(module), "add_parser", None)
        if add is not None:  # an optional module still being written has none yet
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list:
        from ..plugin.transport import serve

        return serve()
    args = build_parser().parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        build_parser().print_help(sys.stderr)
        return 2
    result = func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
