"""Defaults live in core/defaults.py alone, and the proto comments state the same values."""

import json
import re
from importlib import resources
from pathlib import Path

import pytest

import workflow_eventbus
from workflow_eventbus import _proto
from workflow_eventbus.core import defaults as d
from workflow_eventbus.core.config import format_duration

SRC = Path(workflow_eventbus.__file__).parent


def _comments() -> dict[str, str]:
    text = resources.files(_proto).joinpath("eventbus_comments.json").read_text("utf-8")
    return dict(json.loads(text))


@pytest.mark.parametrize(
    ("field", "stated"),
    [
        ("ClusterConfig.connect_timeout", format_duration(d.DEFAULT_CONNECT_TIMEOUT)),
        ("ClusterConfig.poll_interval", format_duration(d.DEFAULT_PG_POLL_INTERVAL)),
        ("ClusterConfig.max_conns", str(d.DEFAULT_PG_MAX_CONNS)),
        ("ClusterConfig.schema", d.DEFAULT_PG_SCHEMA),
        ("ClusterConfig.version", d.DEFAULT_NATS_VERSION),
        ("StreamConfig.duplicate_window", format_duration(d.DEFAULT_DUPLICATE_WINDOW)),
        ("StreamConfig.ack_wait", format_duration(d.DEFAULT_ACK_WAIT)),
        ("ConsumerConfig.ack_wait", format_duration(d.DEFAULT_ACK_WAIT)),
        ("ConsumerConfig.max_ack_pending", str(d.DEFAULT_MAX_ACK_PENDING)),
        ("ConsumerConfig.backoff", ", ".join(format_duration(s) for s in d.DEFAULT_BACKOFF)),
        ("ConsumerConfig.max_in_flight", str(d.DEFAULT_MAX_IN_FLIGHT)),
        ("ConsumerConfig.drain_timeout", format_duration(d.DEFAULT_DRAIN_TIMEOUT)),
    ],
)
def test_proto_comment_states_the_default(field: str, stated: str) -> None:
    comment = _comments()[field]
    assert re.search(rf"\bDefault {re.escape(stated)}\b", comment), (field, comment)


def test_no_default_is_defined_outside_core_defaults() -> None:
    assignment = re.compile(r"^\s*(DEFAULT_[A-Z0-9_]+)\s*(?::[^=]+)?=", re.M)
    found = []
    for path in SRC.rglob("*.py"):
        if "_proto" in path.parts or path == SRC / "core" / "defaults.py":
            continue
        found += [f"{path.relative_to(SRC)}: {m}" for m in assignment.findall(path.read_text())]
    assert found == []


def test_every_default_states_its_unit_or_meaning() -> None:
    # Each DEFAULT_ line in core/defaults.py carries a comment (unit, setting, bounds).
    text = (SRC / "core" / "defaults.py").read_text()
    lines = [ln for ln in text.splitlines() if re.match(r"(DEFAULT|MAX)_[A-Z0-9_]+ =", ln)]
    assert lines and all("#" in ln for ln in lines), [ln for ln in lines if "#" not in ln]
