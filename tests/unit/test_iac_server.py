"""The IaC provider's nats-server supervisor when the server never becomes ready:
the started process is killed and reaped (no zombie, no orphan), and the error
gives its real exit status. A fake nats-server (a shell script) stands in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from workflow_eventbus.core.errors import BrokerUnavailableError
from workflow_eventbus.plugin.iac import server


def _fake_server(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "nats-server"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


class _Started:
    """Records the Popen the supervisor makes and says when it exists."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.event = asyncio.Event()
        real = subprocess.Popen

        def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            proc: subprocess.Popen[bytes] = real(*args, **kwargs)
            self.procs.append(proc)
            self.event.set()
            return proc

        monkeypatch.setattr(server.subprocess, "Popen", popen)

    def cleanup(self) -> None:
        for proc in self.procs:  # only what a failing test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # already waited for: neither running nor a zombie
    return False


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Any:
    record = _Started(monkeypatch)
    yield record
    record.cleanup()


async def test_a_server_that_never_gets_ready_is_killed_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: _Started
) -> None:
    monkeypatch.setenv(server.ENV_BIN, str(_fake_server(tmp_path, "exec sleep 60")))
    with pytest.raises(BrokerUnavailableError) as caught:
        await server.ensure_running(tmp_path / "nats", 0, ready_timeout=0.2)
    message = str(caught.value)
    assert "did not start within 0.2s" in message
    assert "killed by SIGKILL" in message and "None" not in message
    assert _reaped(started.procs[0].pid)
    assert server.read_record(tmp_path / "nats") is None


async def test_a_server_that_exits_gives_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: _Started
) -> None:
    monkeypatch.setenv(server.ENV_BIN, str(_fake_server(tmp_path, "echo bad flag >&2; exit 3")))
    with pytest.raises(BrokerUnavailableError) as caught:
        await server.ensure_running(tmp_path / "nats", 0, ready_timeout=30.0)
    message = str(caught.value)
    assert "nats-server exited (exit status 3)" in message
    assert "bad flag" in message  # the log tail
    assert _reaped(started.procs[0].pid)


async def test_a_cancelled_start_leaves_no_server_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started: _Started
) -> None:
    monkeypatch.setenv(server.ENV_BIN, str(_fake_server(tmp_path, "exec sleep 60")))
    task = asyncio.create_task(server.ensure_running(tmp_path / "nats", 0, ready_timeout=60.0))
    await started.event.wait()  # the process exists; the task is polling for readiness
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _reaped(started.procs[0].pid)
    assert server.read_record(tmp_path / "nats") is None
