"""CPU time of processes from ``/proc/PID/stat`` (user + system), for CPU per message.

    meter = CpuMeter({"engine": [pid], "nats-server": [pid2]})
    meter.begin(); ...; used = meter.end()   # seconds of CPU per role since begin()

A process that is gone by ``end`` counts with the last value read for it (take
readings while the processes run). Off Linux every reading is 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces: ") S ppid ..." where
    # utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class CpuMeter:
    """CPU used per role (a role is a set of processes, e.g. every engine replica)."""

    def __init__(self, roles: Mapping[str, Iterable[int]]) -> None:
        self.roles = {name: list(pids) for name, pids in roles.items()}
        self._start: dict[int, float] = {}

    def _read(self) -> dict[int, float]:
        values = {}
        for pids in self.roles.values():
            for pid in pids:
                value = cpu_seconds(pid)
                if value is not None:
                    values[pid] = value
        return values

    def begin(self) -> None:
        self._start = self._read()

    def end(self) -> dict[str, float]:
        now = self._read()
        used: dict[str, float] = {}
        for name, pids in self.roles.items():
            used[name] = sum(
                max(now.get(pid, self._start.get(pid, 0.0)) - self._start.get(pid, 0.0), 0.0)
                for pid in pids
            )
        return used
