"""Entry point of the bench command (async)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from .env import BenchEnv
from .runner import Group, Settings, nats_groups, report, run_groups


def settings_from(ns: argparse.Namespace) -> Settings:
    return Settings(
        quick=ns.quick,
        rounds=ns.rounds,
        scale=ns.scale,
        seconds=ns.seconds,
        only=tuple(ns.only),
        loop=ns.loop,
        plugin_loop=ns.plugin_loop,
        pg=not ns.no_pg,
        kafka=not ns.no_kafka,
        out=ns.out,
    )


def _selected(groups: list[Group], only: Sequence[str]) -> list[Group]:
    if not only:
        return groups
    return [g for g in groups if any(key in g.name for key in only)]


async def main(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] %(name)s: %(message)s")
    settings = settings_from(ns)
    if ns.engine:
        return await engine_main(ns, settings)
    if ns.memory:
        from .memory import memory_check

        return await memory_check(ns.memory_messages, settings)
    started = time.monotonic()
    outcomes = []
    async with BenchEnv(loop=settings.loop, plugin_loop=settings.plugin_loop) as env:
        outcomes += await run_groups(_selected(nats_groups(env), settings.only), settings)
        if settings.pg:
            from .pg_paths import pg_run

            outcomes += await pg_run(settings, _selected)
        if settings.kafka:
            from .kafka_paths import kafka_run

            outcomes += await kafka_run(settings, _selected, env)
    print(report(outcomes, settings))
    print(f"total {time.monotonic() - started:.0f}s")
    return 1 if any(o.error for o in outcomes) else 0


async def engine_main(ns: argparse.Namespace, settings: Settings) -> int:
    from .engine_report import report as engine_report
    from .engine_rows import EngineSettings, run_engine_bench

    engine_settings = EngineSettings(
        short=ns.quick,
        rounds=ns.rounds,
        events=ns.events,
        loss_events=ns.loss_events,
        down=ns.down,
        replicas=tuple(ns.replicas),
        loop=settings.loop,
        out=settings.out,
    )
    rows, losses, info = await run_engine_bench(engine_settings)
    print(engine_report(rows, losses, info, engine_settings))
    broken = [row.name for row in rows if not row.rates] + [
        x.name for x in losses if x.loss is None
    ]
    return 1 if broken else 0
