"""``workflow-plugin-eventbus``: the plugin launcher and the tools around it.

With no arguments it behaves like any go-plugin binary: when the engine runs it
(``WORKFLOW_PLUGIN=workflow-external-plugin-v1`` in the environment) it serves
the plugin; otherwise it tells a person what it is and exits 1.

Each subcommand is a module of this package with ``add_parser(sub)``, listed
in :data:`COMMANDS`; an import error in one fails the whole command loudly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from . import (
    bench,
    demo,
    dlq,
    infra,
    install,
    manifest,
    migrate,
    publish,
    serve,
    status,
    tail,
    upgrade_config,
    validate,
)

# Each module provides add_parser(subparsers); the parser it adds sets `func`.
COMMANDS = (
    serve,
    install,
    manifest,
    demo,
    migrate,
    bench,
    dlq,
    validate,
    upgrade_config,
    infra,
    status,
    publish,
    tail,
)


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
    for command in COMMANDS:
        command.add_parser(sub)
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
