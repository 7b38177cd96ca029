"""The scenario list, the paired rounds and the report."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .core import Outcome, Scenario, table, write_json
from .env import BenchEnv
from .metrics_paths import MetricsPaths
from .nats_paths import NatsPaths
from .plugin_paths import PluginPaths

log = logging.getLogger("workflow_eventbus.bench")


@dataclass(slots=True)
class Group:
    """Scenarios measured together: each round runs every member once, order alternating."""

    name: str
    members: list[Scenario] = field(default_factory=list)
    # What only this group's scenarios use (processes), entered around its rounds.
    needs: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None


@dataclass(slots=True)
class Settings:
    quick: bool = False
    rounds: int = 0  # 0: 3 in quick mode, 5 otherwise
    scale: float = 1.0
    seconds: float = 0.0  # time bound per sample; 0: 4 s quick, 15 s full
    only: Sequence[str] = ()
    loop: str = "asyncio"
    plugin_loop: str = "default"
    pg: bool = True
    kafka: bool = True
    out: Path = Path("bench/results.json")

    @property
    def round_count(self) -> int:
        return self.rounds or (3 if self.quick else 5)

    @property
    def time_bound(self) -> float:
        return self.seconds or (4.0 if self.quick else 15.0)

    def messages(self, scenario: Scenario) -> int:
        factor = self.scale * (0.2 if self.quick else 1.0)
        return max(int(scenario.messages * factor) // 100 * 100, 100)


def nats_groups(env: BenchEnv) -> list[Group]:
    raw, plug, metered = NatsPaths(env), PluginPaths(env), MetricsPaths(env)
    return [
        Group(
            "publish",
            [
                Scenario("nats_raw.publish", raw.raw_publish, 10000, latency="message"),
                Scenario(
                    "library.publish",
                    raw.lib_publish,
                    10000,
                    "nats_raw.publish",
                    0.9,
                    latency="message",
                ),
            ],
        ),
        Group(
            "publish_batch",
            [
                Scenario("nats_raw.publish_async", raw.raw_publish_async, 40000, latency="batch"),
                Scenario(
                    "library.publish_many",
                    raw.lib_publish_many,
                    40000,
                    "nats_raw.publish_async",
                    0.8,
                    latency="batch",
                ),
            ],
        ),
        Group(
            "step_publish",
            [
                Scenario("raw.publish+grpc_echo", raw.raw_publish_echo, 3000, latency="message"),
                Scenario(
                    "plugin.step_publish",
                    plug.step_publish,
                    3000,
                    "raw.publish+grpc_echo",
                    0.8,
                    latency="message",
                ),
            ],
        ),
        Group(
            "consume_batch",
            [
                Scenario("nats_raw.fetch100+ack", raw.raw_fetch_ack, 20000, latency="batch"),
                Scenario(
                    "plugin.consume100+ack",
                    plug.step_consume_ack,
                    20000,
                    "nats_raw.fetch100+ack",
                    0.6,
                    latency="batch",
                ),
            ],
        ),
        Group(
            "trigger",
            [
                Scenario(
                    "raw.fetch1+ack+grpc_echo", raw.raw_fetch1_ack_echo, 3000, latency="message"
                ),
                Scenario(
                    "plugin.trigger_mif1",
                    plug.trigger_1,
                    3000,
                    "raw.fetch1+ack+grpc_echo",
                    0.8,
                    latency="message",
                ),
                Scenario(
                    "plugin.trigger_mif16",
                    plug.trigger_16,
                    8000,
                    "plugin.trigger_mif1",
                    3.0,
                    latency="message",
                ),
                Scenario(  # no target: the same ratio for the raw clients, as context
                    "raw.fetch16+ack+grpc_echo_x16",
                    raw.raw_fetch_ack_echo_16,
                    8000,
                    "raw.fetch1+ack+grpc_echo",
                    latency="message",
                ),
            ],
        ),
        Group("metrics", metered.scenarios(), metered.running),
    ]


async def run_groups(groups: Sequence[Group], settings: Settings) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for group in groups:
        needs = group.needs() if group.needs is not None else contextlib.nullcontext()
        async with needs:
            outcomes.extend(await run_group(group, settings))
    return outcomes


async def run_group(group: Group, settings: Settings) -> list[Outcome]:
    by_name = {sc.name: Outcome(sc) for sc in group.members}
    started = time.monotonic()
    try:
        for sc in group.members:  # warm-up: connections, caches, first-call costs
            await sc.run(max(settings.messages(sc) // 10, 100), settings.time_bound / 4)
        for index in range(settings.round_count):
            order = group.members if index % 2 == 0 else list(reversed(group.members))
            for sc in order:
                by_name[sc.name].samples.append(
                    await sc.run(settings.messages(sc), settings.time_bound)
                )
            for out in by_name.values():
                base = by_name.get(out.scenario.baseline or "")
                if base is not None and base.samples[-1].rate > 0:
                    out.ratios.append(out.samples[-1].rate / base.samples[-1].rate)
    except Exception as exc:
        log.error("bench group %s failed: %s", group.name, exc)
        traceback.print_exc()
        for out in by_name.values():
            out.error = f"failed: {exc}"
    print(f"# {group.name}: {time.monotonic() - started:.1f}s", flush=True)
    return list(by_name.values())


def machine() -> str:
    import os

    cpus = os.cpu_count() or 0
    return (
        f"{platform.system()} {platform.machine()}, {cpus} CPU, Python {platform.python_version()}"
    )


def report(outcomes: Sequence[Outcome], settings: Settings) -> str:
    mode = "quick" if settings.quick else "full"
    lines = [
        f"workflow-plugin-eventbus bench ({mode}, {settings.round_count} rounds, "
        f"loop={settings.loop}, plugin loop={settings.plugin_loop}) on {machine()}",
        "",
        table(outcomes),
        "",
        "rate: median of the rounds; ratio: median of per-round scenario/baseline rates;",
        "latency per message, or per batch of 100 for the batch rows.",
    ]
    write_json(settings.out, outcomes)
    lines.append(f"wrote {settings.out}")
    return "\n".join(lines)
