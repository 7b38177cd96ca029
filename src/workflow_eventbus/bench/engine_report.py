"""The engine bench's table, same-run ratios, goals (reported, never asserted) and JSON."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine_job import ms
from .engine_rows import ROLES, EngineSettings, LossRow, Row

# (numerator, denominator): rate ratios taken per round, median reported.
RATIOS = (
    ("ours.mif1", "builtin"),
    ("ours.mif16", "builtin"),
    ("ours.mif1", "faststream.default"),
    ("ours.mif16", "faststream.w16"),
    ("ours.mif16.x2", "ours.mif16"),
    ("ours.mif16.x3", "ours.mif16"),
    ("ingest.ours", "ingest.builtin"),
)


def ratio(rows: dict[str, Row], top: str, bottom: str) -> tuple[float | None, list[float]]:
    a, b = rows.get(top), rows.get(bottom)
    if a is None or b is None:
        return None, []
    per_round = [x / y for x, y in zip(a.rates, b.rates, strict=False) if y > 0]
    return (statistics.median(per_round) if per_round else None), per_round


def cpu_bound(row: Row) -> float:
    """Messages per second if CPU were the only limit: cores / CPU per message, all processes."""
    total = row.cpu_total_us
    return (os.cpu_count() or 1) / (total / 1e6) if total > 0 else 0.0


def table(rows: Sequence[Row]) -> str:
    head = (
        "row",
        "rate/s",
        "p50 ms",
        "p99 ms",
        *(f"{r} us" for r in ROLES),
        "total us",
        "CPU bound/s",
        "log/msg",
        "note",
    )
    lines: list[tuple[str, ...]] = [head]
    for row in rows:
        if not row.rates:
            lines.append((row.name, *("-" for _ in head[1:-1]), row.error))
            continue
        lines.append(
            (
                row.name,
                f"{row.rate:,.0f}",
                f"{ms(row.latencies, 50):.2f}",
                f"{ms(row.latencies, 99):.2f}",
                *(f"{row.cpu_us(r):.0f}" if row.cpu_us(r) else "-" for r in ROLES),
                f"{row.cpu_total_us:.0f}",
                f"{cpu_bound(row):,.0f}",
                f"{statistics.median(row.log_lines):.1f}" if row.log_lines else "-",
                row.error,
            )
        )
    return _align(lines)


def loss_table(losses: Sequence[LossRow]) -> str:
    lines: list[tuple[str, ...]] = [
        ("loss row", "sent", "derived", "unique", "duplicates", "lost", "outage s", "note")
    ]
    for out in losses:
        if out.loss is None:
            lines.append((out.name, "-", "-", "-", "-", "-", "-", out.error))
            continue
        x = out.loss
        lines.append(
            (
                out.name,
                str(x.sent),
                str(x.derived),
                str(x.unique),
                str(x.duplicates),
                str(x.lost),
                f"{x.outage:.1f}",
                "",
            )
        )
    return _align(lines)


def _align(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for index, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, len(line) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def goals(rows: dict[str, Row], losses: Sequence[LossRow]) -> list[tuple[str, str, bool | None]]:
    """Issue 19's goals: (what, measured, met) - reported only."""
    out: list[tuple[str, str, bool | None]] = []

    def cpu(name: str, role: str) -> float | None:
        row = rows.get(name)
        return row.cpu_us(role) if row is not None and row.cpu else None

    for ours, theirs in (("ours.mif16", "faststream.w16"), ("ours.mif1", "faststream.default")):
        plugin, fs = cpu(ours, "plugin"), cpu(theirs, "faststream")
        if plugin is not None and fs:
            out.append(
                (
                    f"plugin CPU/msg {ours} <= FastStream's {theirs}",
                    f"{plugin:.0f} vs {fs:.0f} us",
                    plugin <= fs,
                )
            )
    for ours in ("ours.mif1", "ours.mif16"):
        engine, builtin = cpu(ours, "engine"), cpu("builtin", "engine")
        if engine is not None and builtin:
            out.append(
                (
                    f"engine CPU/msg {ours} <= 2.5x built-in's",
                    f"{engine:.0f} vs {builtin:.0f} us = {engine / builtin:.2f}x",
                    engine <= 2.5 * builtin,
                )
            )
    for top, bottom, target in (
        ("ours.mif16", "faststream.w16", 0.8),
        ("ours.mif1", "faststream.default", 0.6),
    ):
        value, _ = ratio(rows, top, bottom)
        if value is not None:
            out.append((f"{top} / {bottom} >= {target}", f"{value:.2f}", value >= target))
    for loss in losses:
        if loss.name.startswith("ours") and loss.loss is not None:
            out.append(
                (f"lost 0 in the loss row of {loss.name}", str(loss.loss.lost), loss.loss.lost == 0)
            )
    return out


def report(
    rows: Sequence[Row],
    losses: Sequence[LossRow],
    info: dict[str, object],
    settings: EngineSettings,
) -> str:
    by_name = {row.name: row for row in rows}
    lines = [
        f"workflow-plugin-eventbus bench --engine ({info['mode']}, {info['rounds']} rounds, "
        f"{info['events']} events per burst) on {info['machine']}",
        f"load average before {info['load_before']}, after {info['load_after']}",
        "",
        table(rows),
        "",
        "rate: events derived per second from a burst, median of the rounds; p50/p99: publish ->",
        "derived event seen, one event every 5 ms (ingest rows: an HTTP request, 16 connections);",
        "CPU per message of each process (from /proc, median of the rounds); CPU bound: cores /",
        "total CPU per message; log/msg: engine log lines per message.",
        "",
    ]
    for top, bottom in RATIOS:
        value, per_round = ratio(by_name, top, bottom)
        if value is not None:
            spread = ", ".join(f"{x:.2f}" for x in per_round)
            lines.append(f"ratio {top} / {bottom}: {value:.2f} (rounds: {spread})")
    lines += ["", loss_table(losses), ""]
    for what, measured, met in goals(by_name, losses):
        verdict = {True: "met", False: "NOT met", None: ""}[met]
        lines.append(f"goal: {what}: {measured} ({verdict})")
    if info.get("skipped"):
        lines.append(f"skipped: {info['skipped']}")
    write_json(settings.out, rows, losses, info)
    lines.append(f"wrote {settings.out} (key 'engine'); {info['seconds']}s")
    return "\n".join(lines)


def results(
    rows: Sequence[Row], losses: Sequence[LossRow], info: dict[str, object]
) -> dict[str, Any]:
    by_name = {row.name: row for row in rows}
    return {
        **info,
        "rows": {
            row.name: {
                "what": row.what,
                "rate": round(row.rate, 1),
                "p50_ms": round(ms(row.latencies, 50), 3),
                "p99_ms": round(ms(row.latencies, 99), 3),
                "cpu_us_per_msg": {r: round(row.cpu_us(r), 1) for r in ROLES},
                "cpu_total_us_per_msg": round(row.cpu_total_us, 1),
                "cpu_bound_rate": round(cpu_bound(row), 1),
                "log_lines_per_msg": round(statistics.median(row.log_lines), 2)
                if row.log_lines
                else None,
                "rounds": [round(x, 1) for x in row.rates],
                "error": row.error,
            }
            for row in rows
        },
        "ratios": {
            f"{top}/{bottom}": {
                "median": None if value is None else round(value, 3),
                "rounds": [round(x, 3) for x in per_round],
            }
            for top, bottom in RATIOS
            for value, per_round in [ratio(by_name, top, bottom)]
            if value is not None
        },
        "loss": {
            out.name: (
                {
                    "sent": out.loss.sent,
                    "derived": out.loss.derived,
                    "unique": out.loss.unique,
                    "duplicates": out.loss.duplicates,
                    "lost": out.loss.lost,
                    "outage_s": round(out.loss.outage, 2),
                }
                if out.loss is not None
                else {"error": out.error}
            )
            for out in losses
        },
        "goals": [
            {"goal": what, "measured": measured, "met": met}
            for what, measured, met in goals(by_name, losses)
        ],
    }


def write_json(
    path: Path, rows: Sequence[Row], losses: Sequence[LossRow], info: dict[str, object]
) -> None:
    """Merge under the key ``engine``: the other bench's ``scenarios`` stay as they are."""
    existing: dict[str, Any] = {}
    try:
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            existing = loaded
    except (OSError, ValueError):
        pass
    existing["engine"] = results(rows, losses, info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2) + "\n")
