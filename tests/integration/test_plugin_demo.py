"""`workflow-plugin-eventbus demo` end to end: its own nats-server, its own plugin process."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_delivers_and_acks_every_event() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "workflow_eventbus.cli.main", "demo", "--count", "400", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["published"] == result["delivered"] == result["acked"] == 400
    assert result["msg_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]


def _demo(*args: str, timeout: float = 120) -> dict[str, float]:
    """``demo ... --count 300 --json``: its result, after checking it exited 0."""
    argv = [sys.executable, "-m", "workflow_eventbus.cli.main", "demo", *args]
    done = subprocess.run(
        [*argv, "--count", "300", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_demo_runs_on_pgchannel(pg_dsn: str) -> None:
    """The same main job with `--provider pgchannel`: no NATS anywhere."""
    result = _demo("--provider", "pgchannel", "--dsn", pg_dsn)
    assert result["published"] == result["delivered"] == result["acked"] == 300


def test_demo_runs_on_kafka() -> None:
    """`--provider kafka` without --dsn: the demo starts its own Kafka and runs on it."""
    result = _demo("--provider", "kafka", timeout=180)
    assert result["published"] == result["delivered"] == result["acked"] == 300
