"""NATS subject matching, shared by the providers that do it themselves."""

from __future__ import annotations

from functools import lru_cache


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
