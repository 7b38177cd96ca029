"""pgchannel config-to-row mapping and ack tokens."""

from __future__ import annotations

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.core.errors import ConfigError, RequestError
from workflow_eventbus.providers.pgchannel import mapping as m


def test_stream_defaults_follow_jetstream() -> None:
    row = m.stream_row(pb.StreamConfig(name="ORDERS", subjects=["orders.>"]))
    assert row["retention"] == "limits"
    assert (row["max_msgs"], row["max_bytes"], row["max_msg_size"]) == (-1, -1, -1)
    assert row["window_ms"] == 120_000 and row["max_age"] is None and row["ack_wait_ms"] is None
    short = m.stream_row(pb.StreamConfig(name="S", subjects=["s.>"], max_age=to_duration(30)))
    assert short["window_ms"] == 30_000 and short["max_age"] == 30


def test_consumer_defaults() -> None:
    row = m.consumer_row(pb.ConsumerConfig(name="c", stream_name="S"))
    assert row["deliver_policy"] == "all" and row["ack_policy"] == "explicit"
    assert row["max_deliver"] == m.UNLIMITED_DELIVER  # Go compares count > max_deliver
    assert row["max_ack_pending"] == 1000 and row["backoff_ms"] == []
    timed = m.consumer_row(
        pb.ConsumerConfig(
            name="c",
            stream_name="S",
            deliver_policy=pb.DELIVER_POLICY_BY_START_TIME,
            opt_start_time="2026-01-02T03:04:05",
        )
    )
    assert timed["opt_start_time"].tzinfo is not None  # naive times are UTC


def test_bad_start_time() -> None:
    cfg = pb.ConsumerConfig(
        name="c",
        stream_name="S",
        deliver_policy=pb.DELIVER_POLICY_BY_START_TIME,
        opt_start_time="yesterday",
    )
    with pytest.raises(ConfigError, match="opt_start_time"):
        m.consumer_row(cfg)


@pytest.mark.parametrize(
    ("token", "parts"),
    [
        ("S:c:7:2", ("S", "c", 7, 2)),
        ("S:c-1:7", ("S", "c-1", 7, None)),  # the Go plugin's 3-part shape
    ],
)
def test_tokens(token: str, parts: tuple[object, ...]) -> None:
    assert m.parse_token(token) == parts


@pytest.mark.parametrize("token", ["", "S:c", "S:c:x", "S::7", "S:c:7:2:1", "bad-stream:c:7"])
def test_bad_tokens(token: str) -> None:
    with pytest.raises((RequestError, ConfigError)):
        m.parse_token(token)


def test_immutable_differences() -> None:
    desired = m.consumer_row(pb.ConsumerConfig(name="c", stream_name="S"))
    assert m.immutable_differences(("all", None, None, "explicit"), desired) == []
    assert m.immutable_differences((None, None, None, "all"), desired) == []  # Go-created
    (diff,) = m.immutable_differences(("new", None, None, "explicit"), desired)
    assert "deliver_policy" in diff and "'new'" in diff
