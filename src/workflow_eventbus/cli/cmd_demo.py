"""``demo``: written next."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    sub.add_parser("demo", help="end-to-end demo (not ready yet)")
