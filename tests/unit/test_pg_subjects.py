"""pgchannel subject filters as regexes, and stream overlap, against the NATS matcher."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow_eventbus.core.subjects import patterns_overlap, split_filter, subject_matches
from workflow_eventbus.providers.pgchannel.subjects import filter_regex

_TOKENS = st.sampled_from(["a", "b", "orders", "x_y", "a+b", "(", "$", "\\", "%", "_"])
_SUBJECTS = st.lists(_TOKENS, min_size=1, max_size=4).map(".".join)
_PATTERNS = st.lists(st.one_of(_TOKENS, st.just("*")), min_size=1, max_size=4).flatmap(
    lambda toks: st.sampled_from([".".join(toks), ".".join([*toks, ">"])])
)


@given(_PATTERNS, _SUBJECTS)
def test_regex_agrees_with_nats_matching(pattern: str, subject: str) -> None:
    # Python's re agrees with PostgreSQL's ARE on this subset (escapes, classes, anchors).
    assert bool(re.search(filter_regex(pattern), subject)) == subject_matches(pattern, subject)


@pytest.mark.parametrize(
    ("flt", "subject", "hit"),
    [
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.created.eu", False),
        ("orders.>", "orders", False),
        ("orders.>", "orders.a.b", True),
        ("a.created, b.>", "b.x", True),  # the Go plugin's comma list, each entry a pattern
        ("a.created, b.>", "a.createdX", False),
        ("a_b.c", "aXb.c", False),  # '_' is not a wildcard (the Go LIKE bug)
    ],
)
def test_filter_examples(flt: str, subject: str, hit: bool) -> None:
    assert bool(re.search(filter_regex(flt), subject)) is hit


def test_empty_filter_matches_all() -> None:
    assert filter_regex("") == "" and split_filter(" , ") == []


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("orders.>", "orders.created", True),
        ("orders.*", "orders.a.b", False),
        ("orders.*", "*.created", True),
        ("orders.>", "orders", False),
        (">", "x", True),
        ("a.b", "a.c", False),
        ("a.*.c", "a.>", True),
    ],
)
def test_overlap(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap
