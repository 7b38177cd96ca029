"""What the trigger data's keys cost cmd/server: our trigger at ``max_in_flight`` 16 with
the full trigger data against a plugin whose trigger data is cut to ``subject``,
``payload`` and ``ack_token`` (what the publish step and the ack need), in alternating
rounds of the engine bench's burst. The cut is made in the plugin process through a
``sitecustomize`` module on its PYTHONPATH; the product code is not changed.

    .venv/bin/python scripts/engine_trigger_keys.py --rounds 4

Needs the engine binaries (interop/build.sh) and prints rate, CPU per message of the
engine and the plugin, and engine log lines per message for both variants.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from workflow_eventbus.bench import engine_apps as apps
from workflow_eventbus.bench.engine_rows import EngineBench, EngineSettings, Row
from workflow_eventbus.bench.engine_sides import EngineSide, Side
from workflow_eventbus.bench.loops import default_loop, run_loop

FLAG = "EXPERIMENT_MINIMAL_TRIGGER_DATA"
SITECUSTOMIZE = f'''\
import os

if os.environ.get("{FLAG}") == "1":
    from workflow_eventbus.engine import trigger

    full = trigger.fill_trigger_struct
    keep = {{"subject", "payload", "ack_token"}}

    def minimal(delivery, target, extra=None):
        full(delivery, target, extra)
        for key in [k for k in target.fields if k not in keep]:
            del target.fields[key]

    trigger.fill_trigger_struct = minimal
'''


async def main(rounds: int, events: int) -> None:
    patch_dir = Path(tempfile.mkdtemp(prefix="trigger-keys-"))
    (patch_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    async with EngineBench(EngineSettings(events=events, latency_events=20)) as bench:

        def variant(minimal: bool) -> Row:
            def side(tag: str) -> Side:
                name = f"keys-{'min' if minimal else 'full'}-{tag}"
                env = bench.env()
                if minimal:
                    env.update(PYTHONPATH=str(patch_dir), **{FLAG: "1"})
                yaml = apps.ours_trigger(name, 16)
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
