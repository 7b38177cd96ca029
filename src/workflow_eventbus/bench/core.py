"""Measurement primitives: samples, percentiles, paired rounds, the table and the JSON."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAYLOAD = (
    b'{"order": 12345, "customer": "c-42", "items": 3, "total": 99.5, "pad": "'
    + (b"x" * 56)
    + b'"}'
)  # 128 bytes, the size the machine notes measured with

clock = time.perf_counter


@dataclass(slots=True)
class Sample:
    """One timed run of a scenario: ``count`` messages in ``elapsed`` seconds."""

    count: int
    elapsed: float
    latencies: list[float] = field(default_factory=list)  # seconds, one per operation

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0


class Budget:
    """Bounds one sample by message count and wall time."""

    __slots__ = ("deadline", "limit", "started")

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.started = clock()
        self.deadline = self.started + seconds

    def more(self, done: int) -> bool:
        return done < self.limit and clock() < self.deadline

    def sample(self, done: int, latencies: list[float]) -> Sample:
        return Sample(done, clock() - self.started, latencies)


Runner = Callable[[int, float], Awaitable[Sample]]


async def timed(
    limit: int,
    seconds: float,
    op: Callable[[], Awaitable[int]],
    *,
    stop_when_empty: bool = False,
) -> Sample:
    """Run ``op`` until ``limit`` messages or ``seconds`` pass; one latency per call.

    ``op`` returns how many messages the call handled; with ``stop_when_empty`` a
    call that handled none ends the sample (nothing left to consume)."""
    lat: list[float] = []
    budget = Budget(limit, seconds)
    done = 0
    while budget.more(done):
        began = clock()
        handled = await op()
        lat.append(clock() - began)
        if not handled and stop_when_empty:
            break
        done += handled
    return budget.sample(done, lat)


@dataclass(slots=True)
class Scenario:
    name: str
    run: Runner
    messages: int  # per sample, full mode
    baseline: str | None = None
    target: float | None = None
    what: str = ""
    latency: str = "op"  # what one latency sample covers ("message", "batch of 100", ...)


@dataclass(slots=True)
class Outcome:
    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.samples) if self.samples else 0.0

    def percentile_ms(self, q: float) -> float:
        pooled = sorted(x for s in self.samples for x in s.latencies)
        return percentile(pooled, q) * 1000.0

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def passed(self) -> bool | None:
        target, ratio = self.scenario.target, self.ratio
        if target is None:
            return None
        return ratio is not None and ratio >= target


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(q / 100.0 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def results_json(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for out in outcomes:
        if not out.samples:
            continue
        ratio = out.ratio
        scenarios[out.scenario.name] = {
            "rate": round(out.rate, 1),
            "p50_ms": round(out.percentile_ms(50), 4),
            "p99_ms": round(out.percentile_ms(99), 4),
            "baseline": out.scenario.baseline,
            "ratio": None if ratio is None else round(ratio, 3),
            # Per round, in order: the spread behind the medians above.
            "rounds": {
                "rates": [round(sample.rate, 1) for sample in out.samples],
                "ratios": [round(value, 3) for value in out.ratios],
            },
        }
    return {"scenarios": scenarios}


def write_json(path: Path, outcomes: Iterable[Outcome]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_json(outcomes), indent=2) + "\n")


def table(outcomes: Sequence[Outcome]) -> str:
    head = ("scenario", "rate/s", "p50 ms", "p99 ms", "baseline", "ratio", "target", "")
    rows: list[tuple[str, ...]] = [head]
    for out in outcomes:
        sc = out.scenario
        if not out.samples:
            rows.append((sc.name, "-", "-", "-", sc.baseline or "", "-", _target(sc), out.error))
            continue
        ratio = out.ratio
        verdict = {True: "PASS", False: "FAIL", None: ""}[out.passed]
        rows.append(
            (
                sc.name,
                f"{out.rate:,.0f}",
                f"{out.percentile_ms(50):.3f}",
                f"{out.percentile_ms(99):.3f}",
                sc.baseline or "",
                "" if ratio is None else f"{ratio:.2f}",
                _target(sc),
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in (0, 4, 7) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _target(sc: Scenario) -> str:
    return "" if sc.target is None else f">={sc.target:g}"
