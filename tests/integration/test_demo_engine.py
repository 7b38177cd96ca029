"""`demo --engine DIR`: the demo through the real workflow engine (cmd/server).

The engine binaries come from ``interop/build.sh`` (``make test`` exports their
directory as ``$WORKFLOW_ENGINE_BIN_DIR``); without them the engine tests skip.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.devservers.engine import ENV_BIN_DIR, alive, find_engine

DEMO = [sys.executable, "-m", "workflow_eventbus.cli.main", "demo"]
# The lines the demo prints for the processes it starts (on stderr with --json).
PID_LINE = re.compile(r"^(?:broker: nats-server|engine: cmd/server|plugin process) (\d+)", re.M)


def _engine_dir() -> Path:
    """The engine binaries; skip only when none are configured or built (a set but
    wrong $WORKFLOW_ENGINE_BIN_DIR fails the test)."""
    if os.environ.get(ENV_BIN_DIR):
        return find_engine()
    try:
        return find_engine()
    except ConfigError as exc:
        pytest.skip(
            f"no workflow engine binaries: set {ENV_BIN_DIR} or run interop/build.sh ({exc})"
        )


def _started(stderr: str) -> list[int]:
    pids = [int(pid) for pid in PID_LINE.findall(stderr)]
    assert len(pids) == 3, stderr  # nats-server, cmd/server, the plugin process
    return pids


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_every_event_is_derived_and_acked_through_the_engine() -> None:
    engine = _engine_dir()
    done = subprocess.run(
        [*DEMO, "--engine", str(engine), "--count", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["published"] == result["delivered"] == result["acked"] == 50
    # Half through the HTTP ingest route, half straight into JetStream.
    assert result["published_http"] == result["published_direct"] == 25
    assert result["msg_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    # Everything the demo started is stopped when it ends.
    assert [pid for pid in _started(done.stderr) if alive(pid)] == []


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_sigterm_stops_the_engine_the_plugin_and_the_broker() -> None:
    engine = _engine_dir()
    proc = subprocess.Popen(
        [*DEMO, "--engine", str(engine), "--count", "10000000", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        while "plugin process" not in seen:
            line = proc.stderr.readline()
            assert line, f"the demo ended before the engine started:\n{seen}"
            seen += line
        pids = _started(seen)
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=40)[1]
        assert proc.returncode == 128 + signal.SIGTERM, rest[-2000:]
        assert "stopped by SIGTERM" in rest
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_missing_engine_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_BIN_DIR}
    done = subprocess.run(
        [*DEMO, "--engine", str(tmp_path), "--count", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].startswith("demo failed: --engine: has no executable cmd/server binary")
    assert str(tmp_path / "server") in lines[0]
    assert "bash interop/build.sh" in lines[0]
    assert "nats-server" not in done.stdout  # it fails before starting anything
