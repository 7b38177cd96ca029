"""SIGTERM to a command that starts servers stops those servers too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append((int(entry.name), cmd))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "--quick", "--only", "publish", "--no-pg", "--rounds", "50"],
        ["demo", "--count", "100000000"],
    ],
    ids=["bench", "demo"],
)
def test_sigterm_stops_the_servers_a_command_started(args: list[str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "workflow_eventbus.cli.main", *args]
    if args[0] == "bench":
        cmd += ["--out", str(tmp_path / "r.json")]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ
    )
    try:
        deadline = time.monotonic() + 60
        servers: list[tuple[int, str]] = []
        while not servers:
            assert time.monotonic() < deadline, "nats-server never started"
            assert proc.poll() is None, "the command ended before it was signalled"
            servers = [c for c in _children(proc.pid) if "nats-server" in c[1]]
            time.sleep(0.1)  # polling the process table for the child to appear
        started = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        left = [(pid, cmd) for pid, cmd in started if _alive(pid)]
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
