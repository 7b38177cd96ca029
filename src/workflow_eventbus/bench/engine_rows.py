"""``bench --engine``: the same job through cmd/server (ours, built-in) and FastStream.

One nats-server (on 127.0.0.1:4222 when that port is free: the built-in
``messaging.nats`` dials nothing else; otherwise a random port and the built-in
rows are skipped with the reason), one stream ``ORDERS``, and each row's consumer
side started, measured and stopped in turn; rounds alternate the order. Per row
and round: a warm-up, a burst (rate, CPU per message of every process from
``/proc``), then events one every 5 ms (publish -> derived latency). After the
rounds, the loss rows: a stream of events with the consumer side stopped for a
few seconds in the middle. Nothing is asserted; the report and
``bench/results.json`` (key ``engine``) carry the figures and the same-run ratios.
"""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from ..core.lifecycle import Service
from ..devservers.engine import engine_binaries
from ..devservers.nats_server import EmbeddedNats
from ..devservers.processes import free_port
from . import engine_apps as apps
from . import engine_job as job
from .engine_sides import EngineSide, FastStreamSide, Side, port_free, wait_port
from .procstat import CpuMeter

BUILTIN_PORT = 4222
# A loss row ends when every event was derived or nothing new came for this long:
# longer than the 30 s ack wait after which ours and FastStream's consumers redeliver
# a message that was in flight when the process stopped (else that would count as lost).
LOSS_SETTLE = 35.0
ROLES = ("engine", "plugin", "faststream", "nats-server", "bench")


@dataclass(slots=True)
class EngineSettings:
    short: bool = False
    rounds: int = 0  # 0: 1 short, 3 full
    events: int = 0  # per burst; 0: 1,000 short, 3,000 full
    latency_events: int = 0  # paced; 0: 100 short, 200 full
    loss_events: int = 0  # 0: 1,000 short, 2,000 full
    down: float = 5.0  # seconds the consumer side is stopped in a loss row
    seconds: float = 60.0  # time bound of one burst
    replicas: tuple[int, ...] = ()  # extra replica rows; (): (2,) short, (2, 3) full
    loop: str = "uvloop"
    out: Path = Path("bench/results.json")

    def __post_init__(self) -> None:
        self.rounds = self.rounds or (1 if self.short else 3)
        self.events = self.events or (1000 if self.short else 3000)
        self.latency_events = self.latency_events or (100 if self.short else 200)
        self.loss_events = self.loss_events or (1000 if self.short else 2000)
        self.replicas = self.replicas or ((2,) if self.short else (2, 3))


@dataclass(slots=True)
class Row:
    name: str
    kind: str  # "trigger" or "ingest"
    make: Callable[[str], Side]  # tag of the round -> a fresh side
    what: str = ""
    rates: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # seconds per message, by role
    latencies: list[float] = field(default_factory=list)
    log_lines: list[float] = field(default_factory=list)  # engine log lines per message
    error: str = ""

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def cpu_us(self, role: str) -> float:
        values = [c.get(role, 0.0) for c in self.cpu]
        return statistics.median(values) * 1e6 if values else 0.0

    @property
    def cpu_total_us(self) -> float:
        totals = [sum(c.values()) for c in self.cpu]
        return statistics.median(totals) * 1e6 if totals else 0.0


@dataclass(slots=True)
class LossRow:
    name: str
    loss: job.Loss | None = None
    error: str = ""


class EngineBench(Service):
    """The servers one ``bench --engine`` run shares, and its rows."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.builtin_ok = port_free(BUILTIN_PORT)
        self.skip_reason = (
            ""
            if self.builtin_ok
            else f"127.0.0.1:{BUILTIN_PORT} is taken: messaging.nats (v0.85.4) dials only that "
            "address, so the built-in rows are skipped (free the port to run them)"
        )
        self.server = EmbeddedNats(port=BUILTIN_PORT if self.builtin_ok else 0)
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-engine-"))
        self.bin_dir = Path()
        self.nc: NatsClient | None = None
        self.derived = job.Derived()
        self._next_id = 1
        self.http_port = 0

    async def start(self) -> None:
        self.bin_dir = await asyncio.to_thread(engine_binaries)
        await self.server.start()
        self.nc = await nats.connect(self.server.url)
        await self.nc.jetstream().add_stream(name=apps.STREAM, subjects=[apps.SUBJECTS])
        await job.subscribe(self.nc, self.derived)  # ends with the connection

    async def teardown(self) -> None:
        if self.nc is not None:
            await self.nc.close()
            self.nc = None
        await self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- ids and sides ---------------------------------------------------------------
    def ids(self, count: int) -> range:
        first = self._next_id
        self._next_id += count
        return range(first, first + count)

    def env(self) -> dict[str, str]:
        return {
            "EVENTBUS_NATS_URL": self.server.url,
            "EVENTBUS_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
        }

    def rows(self) -> list[Row]:
        s = self.settings
        rows = [
            Row(
                "ours.mif1", "trigger", lambda tag: self._ours(f"ours1-{tag}", 1), "max_in_flight 1"
            ),
            Row(
                "ours.mif16",
                "trigger",
                lambda tag: self._ours(f"ours16-{tag}", 16),
                "max_in_flight 16",
            ),
        ]
        rows += [
            Row(
                f"ours.mif16.x{k}",
                "trigger",
                functools.partial(self._replicas, k),
                f"{k} replicas on one durable, max_in_flight 16 each",
            )
            for k in s.replicas
        ]
        if self.builtin_ok:
            rows.append(Row("builtin", "trigger", self._builtin, "messaging.nats"))
        rows += [
            Row(
                "faststream.default",
                "trigger",
                lambda tag: self._faststream(f"fs1-{tag}", 1),
                "1 worker",
            ),
            Row(
                "faststream.w16",
                "trigger",
                lambda tag: self._faststream(f"fs16-{tag}", 16),
                "max_workers 16",
            ),
            Row(
                "ingest.ours",
                "ingest",
                lambda tag: self._engine(f"ingest-ours-{tag}", apps.ours_ingest(), True),
                "HTTP -> step.eventbus.publish",
            ),
        ]
        if self.builtin_ok:
            rows.append(
                Row(
                    "ingest.builtin",
                    "ingest",
                    lambda tag: self._engine(f"ingest-builtin-{tag}", apps.builtin_ingest(), False),
                    "HTTP -> step.publish",
                )
            )
        return rows

    def _engine(self, name: str, yaml: str, plugin: bool, replicas: int = 1) -> Side:
        return EngineSide(
            name,
            self.bin_dir,
            yaml,
            self.workdir / name,
            self.env(),
            plugin=plugin,
            replicas=replicas,
        )

    def _ours(self, durable: str, mif: int, replicas: int = 1) -> Side:
        return self._engine(durable, apps.ours_trigger(durable, mif), True, replicas)

    def _replicas(self, count: int, tag: str) -> Side:
        return self._ours(f"ours16x{count}-{tag}", 16, count)

    def _builtin(self, tag: str) -> Side:
        # No plugin in its plugins dir: the engine would start ours although unused.
        return self._engine(f"builtin-{tag}", apps.builtin_trigger(), False)

    def _faststream(self, durable: str, workers: int) -> Side:
        return FastStreamSide(
            durable,
            self.server.url,
            durable,
            workers=workers,
            workdir=self.workdir / "faststream",
            loop=self.settings.loop,
        )

    def meter(self, side: Side) -> CpuMeter:
        roles = side.roles()
        assert self.server.pid is not None
        roles["nats-server"] = [self.server.pid]
        roles["bench"] = [os.getpid()]
        return CpuMeter(roles)

    async def reset(self, side: Side) -> None:
        """After a row: remove its durable consumer, purge the stream."""
        assert self.nc is not None
        jsm = self.nc.jsm()
        for info in await jsm.consumers_info(apps.STREAM):
            await jsm.delete_consumer(apps.STREAM, info.name)
        await jsm.purge_stream(apps.STREAM)
        self.derived.counts.clear()
        self.derived.first_seen.clear()

    # -- one measurement ---------------------------------------------------------------
    async def measure(self, row: Row, tag: str) -> None:
        assert self.nc is not None
        if row.kind == "ingest":
            self.http_port = free_port()
        side = row.make(tag)
        try:
            async with side:
                if row.kind == "ingest":
                    await self._measure_ingest(row, side)
                else:
                    await self._measure_trigger(row, side)
        finally:
            await self.reset(side)

    async def _measure_trigger(self, row: Row, side: Side) -> None:
        s = self.settings
        assert self.nc is not None
        warm = await job.burst(self.nc, self.derived, self.ids(max(s.events // 10, 100)), 20.0)
        if not warm.seen:
            raise RuntimeError(f"{row.name}: no event derived in the warm-up within 20s")
        meter = self.meter(side)
        lines_before = side.log_lines() if isinstance(side, EngineSide) else 0
        meter.begin()
        result = await job.burst(self.nc, self.derived, self.ids(s.events), s.seconds)
        used = meter.end()
        if result.seen < result.sent:
            row.error = (
                f"{result.sent - result.seen} of {result.sent} not derived in {s.seconds:.0f}s"
            )
        if isinstance(side, EngineSide) and result.seen:
            row.log_lines.append((side.log_lines() - lines_before) / result.seen)
        row.rates.append(result.rate)
        row.cpu.append({role: value / max(result.seen, 1) for role, value in used.items()})
        row.latencies += await job.paced_latency(
            self.nc, self.derived, self.ids(s.latency_events), 0.005, s.seconds
        )

    async def _measure_ingest(self, row: Row, side: Side) -> None:
        s = self.settings
        await wait_port(self.http_port)
        await job.http_load(
            self.http_port, max(s.events // 10, 100), 16, s.seconds, self.ids(1).start
        )
        meter = self.meter(side)
        meter.begin()
        ok, elapsed, latencies = await job.http_load(
            self.http_port, s.events, 16, s.seconds, self.ids(s.events).start
        )
        used = meter.end()
        if ok < s.events:
            row.error = f"{s.events - ok} of {s.events} requests not answered 2xx"
        row.rates.append(ok / elapsed if elapsed > 0 else 0.0)
        row.cpu.append({role: value / max(ok, 1) for role, value in used.items()})
        row.latencies += latencies

    # -- loss rows ---------------------------------------------------------------------
    async def loss(self, name: str, side: Side) -> LossRow:
        s = self.settings
        assert self.nc is not None
        out = LossRow(name)
        try:
            async with side:
                await job.burst(self.nc, self.derived, self.ids(100), s.seconds)
                out.loss = await job.loss_run(
                    self.nc,
                    self.derived,
                    self.ids(s.loss_events),
                    stop=side.stop,
                    start=side.start,
                    down=s.down,
                    spread=s.down + 4.0,
                    settle=LOSS_SETTLE,
                )
        except Exception as exc:  # reported in the table, the run goes on
            out.error = f"failed: {exc}"
        finally:
            await self.reset(side)
        return out

    def loss_sides(self) -> list[tuple[str, Side]]:
        sides: list[tuple[str, Side]] = [("ours.mif16", self._ours("loss-ours", 16))]
        if self.builtin_ok:
            sides.append(("builtin", self._builtin("loss")))
        sides.append(("faststream.w16", self._faststream("loss-fs16", 16)))
        return sides


def context(
    settings: EngineSettings, skipped: str, load_before: tuple[float, float, float], seconds: float
) -> dict[str, object]:
    return {
        "mode": "short" if settings.short else "full",
        "rounds": settings.rounds,
        "events": settings.events,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU, "
        f"Python {platform.python_version()}",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(seconds, 1),
        "skipped": skipped,
    }


async def run_engine_bench(
    settings: EngineSettings,
) -> tuple[list[Row], list[LossRow], dict[str, object]]:
    load_before = os.getloadavg()
    started = time.monotonic()
    async with EngineBench(settings) as bench:
        if bench.skip_reason:
            print(f"# skipped: {bench.skip_reason}", flush=True)
        rows = bench.rows()
        for index in range(settings.rounds):
            order = rows if index % 2 == 0 else list(reversed(rows))
            for row in order:
                began = time.monotonic()
                try:
                    await bench.measure(row, f"r{index}")
                except Exception as exc:  # one broken row must not hide the others
                    row.error = f"failed: {exc}"
                print(
                    f"# round {index + 1} {row.name}: {time.monotonic() - began:.1f}s", flush=True
                )
        losses = []
        for name, side in bench.loss_sides():
            began = time.monotonic()
            losses.append(await bench.loss(name, side))
            print(f"# loss {name}: {time.monotonic() - began:.1f}s", flush=True)
        info = context(settings, bench.skip_reason, load_before, time.monotonic() - started)
    return rows, losses, info
