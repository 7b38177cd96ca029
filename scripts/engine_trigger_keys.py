"""What the trigger data's keys cost cmd/server: our trigger at ``max_in_flight`` 16 with
the full trigger data against the same app whose consumer sets ``trigger_data:
[subject, payload, ack_token]`` (what its publish step needs), in alternating rounds
of the engine bench's burst.

    .venv/bin/python scripts/engine_trigger_keys.py --rounds 4

Needs the engine binaries (interop/build.sh) and prints rate, CPU per message of the
engine and the plugin, and engine log lines per message for both variants.
"""

from __future__ import annotations

import argparse
import statistics

from workflow_eventbus.bench import engine_apps as apps
from workflow_eventbus.bench.engine_rows import EngineBench, EngineSettings, Row
from workflow_eventbus.bench.engine_sides import EngineSide, Side
from workflow_eventbus.bench.loops import default_loop, run_loop

MINIMAL = ("subject", "payload", "ack_token")


async def main(rounds: int, events: int) -> None:
    async with EngineBench(EngineSettings(events=events, latency_events=20)) as bench:

        def variant(minimal: bool) -> Row:
            def side(tag: str) -> Side:
                name = f"keys-{'min' if minimal else 'full'}-{tag}"
                env = bench.env()
                yaml = apps.ours_trigger(name, 16, MINIMAL if minimal else ())
                return EngineSide(name, bench.bin_dir, yaml, bench.workdir / name, env, plugin=True)

            return Row("minimal trigger data" if minimal else "full trigger data", "trigger", side)

        rows = [variant(False), variant(True)]
        for index in range(rounds):
            for row in rows if index % 2 == 0 else rows[::-1]:
                await bench.measure(row, f"r{index}")
        for row in rows:
            lines = statistics.median(row.log_lines) if row.log_lines else 0.0
            print(
                f"{row.name}: {row.rate:,.0f}/s (rounds {[round(r) for r in row.rates]}), "
                f"engine {row.cpu_us('engine'):.0f} us, plugin {row.cpu_us('plugin'):.0f} us, "
                f"nats-server {row.cpu_us('nats-server'):.0f} us per message, "
                f"{lines:.1f} engine log lines per message"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=3000)
    ns = parser.parse_args()
    run_loop(main(ns.rounds, ns.events), default_loop())
