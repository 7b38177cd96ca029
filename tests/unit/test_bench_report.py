"""The bench's JSON report: medians over the rounds, and the rounds behind them."""

from __future__ import annotations

import json
from pathlib import Path

from workflow_eventbus.bench.core import Outcome, Sample, Scenario, write_json


async def _never(limit: int, seconds: float) -> Sample:
    raise AssertionError("not run")


def test_the_report_gives_medians_and_every_round(tmp_path: Path) -> None:
    base = Outcome(Scenario("raw", _never, 100))
    base.samples = [Sample(1000, 1.0), Sample(1200, 1.0), Sample(800, 1.0)]
    plugin = Outcome(Scenario("plugin", _never, 100, baseline="raw", target=3.0))
    plugin.samples = [Sample(3300, 1.0, [0.001, 0.002]), Sample(3000, 1.0), Sample(2000, 1.0)]
    plugin.ratios = [3.3, 2.5, 2.5]
    out = tmp_path / "bench" / "results.json"
    write_json(out, [base, plugin, Outcome(Scenario("failed", _never, 100))])
    report = json.loads(out.read_text())["scenarios"]
    assert set(report) == {"raw", "plugin"}  # a scenario without samples is left out
    assert report["plugin"]["rate"] == 3000.0 and report["plugin"]["ratio"] == 2.5
    assert report["plugin"]["baseline"] == "raw" and report["raw"]["ratio"] is None
    assert report["plugin"]["p99_ms"] == 2.0
    assert report["plugin"]["rounds"] == {
        "rates": [3300.0, 3000.0, 2000.0],
        "ratios": [3.3, 2.5, 2.5],
    }
    assert report["raw"]["rounds"]["rates"] == [1000.0, 1200.0, 800.0]
