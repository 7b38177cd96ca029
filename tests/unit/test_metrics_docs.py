"""The Grafana dashboard and the alert examples query only series the code exports,
the dashboard shows every eventbus_* series, and every expression parses (promtool,
from the Debian prometheus package that scripts/setup.sh installs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflow_eventbus.engine.telemetry.metrics import SERIES, Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "eventbus.json"
DOC = ROOT / "docs" / "observability.md"
PROMTOOL = os.environ.get("PROMTOOL_BIN", "/usr/bin/promtool")

# Grafana's own variables, as a query would see them once Grafana filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan", "atan2"}
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for found in IDENTIFIER.finditer(text):
        word = found.group()
        follows = text[found.end() :].lstrip()[:1]
        if word.lower() in KEYWORDS or follows == "(":
            continue
        names.add(word)
    return names


def test_metric_names_reads_selectors_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, consumer) (rate(a_bucket{x="y"}[5m])))'
        " / on(consumer) group_left b_total or absent(up{job='j'})"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    board = json.loads(DASHBOARD.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else ""
        found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query or variable["definition"])
        assert found, variable
        yield f"variable {variable['name']}", found.group(1)


def grafana_filled(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # the dashboard's own variables: "All"


def alert_rules() -> dict[str, Any]:
    section = DOC.read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    rules: dict[str, Any] = yaml.safe_load(block)
    return rules


def exported() -> frozenset[str]:
    metrics = Metrics(process=True)
    try:
        return metrics.names() | {"up"}  # up: Prometheus's own series of each target
    finally:
        metrics.close()


def test_the_dashboard_queries_only_exported_series_and_shows_every_one() -> None:
    used: set[str] = set()
    for where, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported(), f"{where}: {sorted(names - exported())} not exported"
        used |= names
    shown = {name for name in used if name.startswith("eventbus_")}
    wanted = {n for n in SERIES if SERIES[n][0] != "histogram"}
    wanted |= {f"{n}_bucket" for n in SERIES if SERIES[n][0] == "histogram"}
    assert wanted <= shown, f"not on the dashboard: {sorted(wanted - shown)}"


def test_the_alert_examples_query_only_exported_series() -> None:
    rules = alert_rules()["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {
        "EventbusPendingGrowing",
        "EventbusDeadLetters",
        "EventbusBrokerDown",
    }
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= exported(), (rule["alert"], names - exported())


def promtool(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    if not os.access(PROMTOOL, os.X_OK):
        pytest.fail(f"{PROMTOOL} missing: run scripts/setup.sh as root or set PROMTOOL_BIN")
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_every_dashboard_expression_and_alert_rule_parses(tmp_path: Path) -> None:
    records = [
        {"record": f"dashboard:expr_{i}", "expr": grafana_filled(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    board_rules = tmp_path / "dashboard.rules.yml"
    board_rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": records}]}))
    alerts = tmp_path / "alerts.rules.yml"
    alerts.write_text(json.dumps(alert_rules()))
    checked = promtool("check", "rules", str(board_rules), str(alerts))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(records)} rules found" in checked.stdout


def test_the_exposition_passes_promtool_check_metrics() -> None:
    from workflow_eventbus.engine.telemetry import Labels
    from workflow_eventbus.providers.base import AckAction

    metrics = Metrics(process=True)
    labels = Labels("bus", "ORDERS", "worker")
    metrics.after_publish(None, "bus", "ORDERS", 2, None)
    metrics.settled(labels, AckAction.ACK)
    metrics.handler_finished(metrics.handler_started(labels, _delivery()), labels, 0.01, None)
    metrics.broker_state("bus", True)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    metrics.close()
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _delivery() -> Any:
    from datetime import UTC, datetime

    from workflow_eventbus.providers.base import Delivery

    return Delivery("ORDERS", "worker", "orders.x", b"", {}, 1, datetime.now(UTC), 1, "t")
