"""Fault-injection scenarios: each one records a row of figures printed at the end."""

from __future__ import annotations

from typing import Any

import pytest
from reliability_helpers import Tally

ROWS: list[Tally] = []


@pytest.fixture
def record() -> Any:
    def add(tally: Tally) -> None:
        ROWS.append(tally)
        print("\n" + Tally.header() + "\n" + tally.row())

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("chaos figures (lost counts acknowledged publishes only)")
    terminalreporter.write_line(Tally.header())
    for tally in ROWS:
        terminalreporter.write_line(tally.row())
