"""How much the trigger's ``max_in_flight`` 16 / 1 ratio depends on the plugin's own CPU.

Two bench environments run side by side, each with its own nats-server, engine
stand-in and plugin process. Plugin B spends ``--extra-us`` microseconds more CPU
on every trigger message (a busy loop added through a ``sitecustomize`` module on
its PYTHONPATH; the product code is untouched). Rounds alternate A and B; each
runs ``max_in_flight`` 16 then 1 and prints the rates, the CPU per message of the
plugin, the bench process (which hosts the engine stand-in) and nats-server, and
the ratio.

The summary gives B's change against A in the ratio and in each rate; with
``--extra-us 0`` it is an A/A run (the spread for identical plugins). Usage,
about 4 minutes on 2 vCPUs:

    .venv/bin/python scripts/trigger_scaling.py --extra-us 150 --rounds 10

docs/performance.md (session 6) has the figures this produced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from workflow_eventbus.bench.env import BenchEnv
from workflow_eventbus.bench.loops import run_loop
from workflow_eventbus.bench.plugin_paths import PluginPaths

SPIN_MODULE = """\
import time
import workflow_eventbus.engine.trigger as trigger

_fill, _clock, _extra = trigger.fill_trigger_struct, time.perf_counter, {extra!r}


def fill_trigger_struct(delivery, target):
    stop = _clock() + _extra
    while _clock() < stop:
        pass
    _fill(delivery, target)


trigger.fill_trigger_struct = fill_trigger_struct
"""


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    name: str
    env: BenchEnv
    paths: PluginPaths
    pid: int
    rows: list[dict[str, float]] = field(default_factory=list)

    async def sample(self, mif: int, count: int) -> dict[str, float]:
        """Rate and CPU us per message of the plugin, bench and nats-server for one run."""
        nats_pid = self.env.nats_server.pid
        assert nats_pid is not None, "the nats-server has not started"
        before = process_cpu(self.pid), time.process_time(), process_cpu(nats_pid)
        run = self.paths.trigger_16 if mif == 16 else self.paths.trigger_1
        got = await run(count, 30.0)
        after = process_cpu(self.pid), time.process_time(), process_cpu(nats_pid)
        plugin, bench, nats = (
            (b - a) / got.count * 1e6 for a, b in zip(before, after, strict=True)
        )
        return {f"r{mif}": got.rate, f"p{mif}": plugin, f"b{mif}": bench, f"n{mif}": nats}


def describe(row: dict[str, float], mif: int) -> str:
    """One trigger run's figures (``row`` may hold medians)."""
    return (
        f"mif{mif} {row[f'r{mif}']:.0f}/s plugin {row[f'p{mif}']:.0f}us "
        f"bench {row[f'b{mif}']:.0f}us nats {row[f'n{mif}']:.0f}us"
    )


async def start_side(name: str, pythonpath: str | None) -> Side:
    if pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath
    env = BenchEnv(loop="uvloop")
    await env.start()
    host = await env.plugin()  # the plugin copies os.environ when it starts
    assert host.process is not None, "the plugin process has not started"
    paths = PluginPaths(env)
    await paths.trigger_16(3000, 10.0)  # warm-up
    await paths.trigger_1(500, 10.0)
    return Side(name, env, paths, host.process.pid)


def summary(side: Side) -> float:
    """Print one side's medians; return the ratio of its summed rates."""
    rows = side.rows
    medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    ratio = sum(r["r16"] for r in rows) / sum(r["r1"] for r in rows)
    per_round = statistics.median(r["r16"] / r["r1"] for r in rows)
    print(
        f"{side.name}: {describe(medians, 16)} | {describe(medians, 1)} | ratio median "
        f"{per_round:.2f}, of the summed rates {ratio:.2f}"
    )
    return ratio


async def main(args: argparse.Namespace, spin_dir: str) -> None:
    spin = spin_dir if args.extra_us > 0 else None  # else an A/A run: B unchanged too
    sides: list[Side] = []
    try:
        sides.append(await start_side("A", None))
        sides.append(await start_side(f"B(+{args.extra_us:g}us)", spin))
        for index in range(args.rounds):
            for side in sides if index % 2 == 0 else sides[::-1]:
                row = await side.sample(16, args.n16) | await side.sample(1, args.n1)
                side.rows.append(row)
                print(
                    f"round {index} {side.name}: {describe(row, 16)} | {describe(row, 1)} | "
                    f"ratio {row['r16'] / row['r1']:.2f}",
                    flush=True,
                )
        ratio_a, ratio_b = summary(sides[0]), summary(sides[1])
        a, b = sides[0].rows, sides[1].rows
        print(
            f"B against A: ratio {ratio_b - ratio_a:+.2f}, mif16 rate "
            f"{sum(r['r16'] for r in b) / sum(r['r16'] for r in a) - 1:+.0%}, mif1 rate "
            f"{sum(r['r1'] for r in b) / sum(r['r1'] for r in a) - 1:+.0%}"
        )
    finally:
        for side in sides:
            await side.env.close()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra-us", type=float, default=150.0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--n16", type=int, default=12000, help="messages per 16-in-flight run")
    parser.add_argument("--n1", type=int, default=2000, help="messages per sequential run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    with tempfile.TemporaryDirectory(prefix="wfeb-spin-") as directory:
        spin = SPIN_MODULE.format(extra=arguments.extra_us / 1e6)
        Path(directory, "sitecustomize.py").write_text(spin)
        run_loop(main(arguments, directory), "uvloop")
