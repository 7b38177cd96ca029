"""The subject grammar, one for every provider: validate, match, filter lists.

Subjects are NATS subjects: dot-separated non-empty tokens without white
space; in a pattern ``*`` is one whole token and ``>`` one or more trailing
tokens. A consumer's ``filter_subject`` is a list: patterns separated by commas
(``"orders.created, orders.paid"``), a message is delivered when any of them
matches. The same text means the same on NATS (several patterns become
JetStream's ``filter_subjects``), pgchannel (one SQL regular expression) and the
memory double; ``tests/conformance`` checks it on each.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import ConfigError

FILTER_SEPARATOR = ","
_WHITE_SPACE = re.compile(r"\s")


def validate_subject(subject: str, *, setting: str, wildcards: bool) -> None:
    """A subject (``wildcards=False``) or a pattern (``wildcards=True``); a ConfigError
    naming ``setting`` otherwise."""
    if not subject:
        raise ConfigError(setting, "subject is empty", fix="write a subject such as orders.created")
    if _WHITE_SPACE.search(subject):
        raise ConfigError(setting, "subjects cannot contain white space", value=subject)
    if FILTER_SEPARATOR in subject:
        raise ConfigError(
            setting,
            "subjects cannot contain ','",
            value=subject,
            fix="a consumer's filter_subject lists several patterns separated by ','; "
            "anywhere else write one subject",
        )
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token:
            raise ConfigError(
                setting,
                "empty token (leading, trailing or double '.')",
                value=subject,
                fix="write tokens separated by single dots, e.g. orders.created",
            )
        is_wild = token in ("*", ">")
        if not is_wild and ("*" in token or ">" in token):
            raise ConfigError(
                setting,
                "'*' and '>' must be whole tokens",
                value=subject,
                fix="write orders.* or orders.>, not orders.x*",
            )
        if is_wild and not wildcards:
            raise ConfigError(
                setting,
                "wildcards are not allowed here",
                value=subject,
                fix="publish to a concrete subject such as orders.created",
            )
        if token == ">" and i != len(tokens) - 1:
            raise ConfigError(setting, "'>' is only allowed as the last token", value=subject)


def split_filter(filter_subject: str) -> list[str]:
    """``"a.*, b.>"`` -> ``["a.*", "b.>"]``; blanks around entries and empty entries go."""
    return [part.strip() for part in filter_subject.split(FILTER_SEPARATOR) if part.strip()]


def validate_filter(filter_subject: str, *, setting: str) -> list[str]:
    """Every pattern of a filter list, validated; returns them (``[]``: no filter)."""
    patterns = split_filter(filter_subject)
    if filter_subject.strip() and not patterns:
        raise ConfigError(
            setting, "lists no pattern", value=filter_subject, fix="write e.g. orders.*"
        )
    for i, pattern in enumerate(patterns):
        where = setting if len(patterns) == 1 else f"{setting}[{i}]"
        validate_subject(pattern, setting=where, wildcards=True)
    return patterns


@lru_cache(maxsize=4096)
def _tokens(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def subject_matches(pattern: str, subject: str) -> bool:
    """True when ``subject`` is matched by ``pattern`` (``*`` one token, ``>`` the rest)."""
    if pattern == subject:
        return True
    pat, sub = _tokens(pattern), _tokens(subject)
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


@lru_cache(maxsize=1024)
def _filter_patterns(filter_subject: str) -> tuple[str, ...]:
    return tuple(split_filter(filter_subject))


def filter_matches(filter_subject: str, subject: str) -> bool:
    """True when a consumer with ``filter_subject`` (a list; empty = all) gets ``subject``."""
    patterns = _filter_patterns(filter_subject)
    return not patterns or any(subject_matches(p, subject) for p in patterns)


def patterns_overlap(a: str, b: str) -> bool:
    """True when some concrete subject matches both NATS patterns."""
    left, right = a.split("."), b.split(".")
    for i in range(max(len(left), len(right))):
        x = left[i] if i < len(left) else None
        y = right[i] if i < len(right) else None
        if x == ">" or y == ">":
            # '>' needs one token or more; the other side must have one here.
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != y and "*" not in (x, y):
            return False
    return True
