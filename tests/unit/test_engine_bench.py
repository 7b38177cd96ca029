"""The engine bench's pure parts: app configs, the derived-event counter, CPU readings, JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import yaml

from workflow_eventbus.bench import engine_apps as apps
from workflow_eventbus.bench import engine_job as job
from workflow_eventbus.bench.engine_report import results, write_json
from workflow_eventbus.bench.engine_rows import EngineSettings, LossRow, Row
from workflow_eventbus.bench.procstat import CpuMeter, cpu_seconds


def test_app_configs_parse_and_name_each_sides_types() -> None:
    ours = yaml.safe_load(apps.ours_trigger("d-1", 16))
    types = [m["type"] for m in ours["modules"]]
    assert types == ["eventbus.broker", "eventbus.stream", "eventbus.consumer"]
    assert ours["modules"][2]["config"]["max_in_flight"] == 16
    assert ours["pipelines"]["audit"]["trigger"]["type"] == "trigger.eventbus.subscribe"
    builtin = yaml.safe_load(apps.builtin_trigger())
    assert builtin["modules"] == [
        {"name": "broker", "type": "messaging.nats", "config": {"url": "nats://127.0.0.1:4222"}}
    ]
    assert builtin["pipelines"]["audit"]["trigger"] == {
        "type": "event",
        "config": {"topic": apps.IN_SUBJECT},
    }
    ingest = yaml.safe_load(apps.ours_ingest())
    step = ingest["pipelines"]["ingest"]["steps"][0]
    assert step["config"]["payload"] == "{{ .request_body }}"
    assert yaml.safe_load(apps.builtin_ingest())["pipelines"]["ingest"]["steps"][0]["type"] == (
        "step.publish"
    )


async def test_derived_counts_first_sightings_and_duplicates() -> None:
    derived = job.Derived()
    for data in (job.event(5), job.event(6), job.event(5), b'{"n":7,"originalMessage":"x"}'):
        await derived.on_message(cast(Any, SimpleNamespace(data=data)))
    ids = range(5, 9)
    assert derived.unique_in(ids) == 3
    assert derived.duplicates_in(ids) == 1
    assert derived.total == 4
    loss = job.Loss(sent=4, derived=4, unique=3, outage=5.0)
    assert (loss.duplicates, loss.lost) == (1, 1)


def test_cpu_meter_reads_this_process() -> None:
    assert cpu_seconds(os.getpid()) is not None
    assert cpu_seconds(2**22 + 12345) is None
    meter = CpuMeter({"bench": [os.getpid()]})
    meter.begin()
    sum(i * i for i in range(300_000))
    assert meter.end()["bench"] >= 0.0


def test_results_merge_under_engine_and_keep_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"scenarios": {"library.publish": {"rate": 1.0}}}))
    row = Row("ours.mif16", "trigger", lambda tag: cast(Any, None))
    row.rates += [900.0, 1000.0, 1100.0]
    row.cpu += [{"engine": 5e-4, "plugin": 7e-4}] * 3
    row.latencies += [0.003, 0.001, 0.002]  # pooled rounds: not in order
    base = Row("faststream.w16", "trigger", lambda tag: cast(Any, None))
    base.rates += [1000.0, 1000.0, 1000.0]
    loss = LossRow("ours.mif16", job.Loss(sent=10, derived=11, unique=10, outage=5.2))
    info: dict[str, object] = {"mode": "short", "rounds": 3}
    write_json(out, [row, base], [loss], info)
    written = json.loads(out.read_text())
    assert written["scenarios"] == {"library.publish": {"rate": 1.0}}
    engine = written["engine"]
    assert engine["rows"]["ours.mif16"]["rate"] == 1000.0
    assert engine["rows"]["ours.mif16"]["cpu_total_us_per_msg"] == 1200.0
    assert (engine["rows"]["ours.mif16"]["p50_ms"], engine["rows"]["ours.mif16"]["p99_ms"]) == (
        2.0,
        3.0,
    )
    assert engine["ratios"]["ours.mif16/faststream.w16"]["median"] == 1.0
    assert engine["loss"]["ours.mif16"]["duplicates"] == 1
    assert engine == results([row, base], [loss], info)


def test_short_mode_defaults() -> None:
    short, full = EngineSettings(short=True), EngineSettings()
    assert (short.rounds, short.events, short.loss_events, short.replicas) == (1, 1000, 1000, (2,))
    assert (full.rounds, full.events, full.loss_events, full.replicas) == (3, 3000, 2000, (2, 3))
