"""NATS subject patterns as PostgreSQL regular expressions.

A consumer filter (a list of patterns, see :mod:`workflow_eventbus.core.subjects`)
becomes one anchored regular expression passed to SQL as a parameter
(``subject ~ %s``); nothing of it is spliced into SQL text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ...core.subjects import split_filter

_LITERAL = re.compile(r"[A-Za-z0-9_-]")


def _escape(token: str) -> str:
    return "".join(ch if _LITERAL.fullmatch(ch) else "\\" + ch for ch in token)


def pattern_regex(pattern: str) -> str:
    """One NATS pattern as an unanchored regular expression body."""
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(_escape(token))
    return r"\.".join(parts)


@lru_cache(maxsize=1024)
def filter_regex(filter_subject: str) -> str:
    """The anchored regex of a consumer filter, or ``""`` (match everything)."""
    patterns = split_filter(filter_subject)
    if not patterns:
        return ""
    return "^(?:" + "|".join(pattern_regex(p) for p in patterns) + ")$"
