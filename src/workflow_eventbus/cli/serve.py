"""``serve``: run the plugin server (what the engine does with no arguments)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve the plugin over go-plugin gRPC (needs the engine's environment)",
        description=(
            "Serve the plugin exactly as with no arguments. The engine sets "
            "WORKFLOW_PLUGIN=workflow-external-plugin-v1; without it this exits 1."
        ),
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..plugin.transport import serve

    return serve()
