"""How much the trigger's ``max_in_flight`` 16 / 1 ratio depends on the plugin's own CPU.

Two bench environments run side by side, each with its own nats-server, engine
stand-in and plugin process. Plugin B spends ``--extra-us`` microseconds more CPU
on every trigger message (a busy loop added through a ``sitecustomize`` module on
its PYTHONPATH; the product code is untouched). Rounds alternate A and B; each
runs ``max_in_flight`` 16 then 1 and prints the rates, the CPU per message of the
plugin and of the bench process (which hosts the engine stand-in), and the ratio.

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
import workflow_eventbus.trigger as trigger

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

    async def sample(self, mif: int, count: int) -> tuple[float, float, float]:
        """(rate, plugin CPU us/msg, bench CPU us/msg) of one trigger run."""
        plugin0, bench0 = process_cpu(self.pid), time.process_time()
        run = self.paths.trigger_16 if mif == 16 else self.paths.trigger_1
        got = await run(count, 30.0)
        plugin = (process_cpu(self.pid) - plugin0) / got.count * 1e6
        bench = (time.process_time() - bench0) / got.count * 1e6
        return got.rate, plugin, bench


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
    med = statistics.median
    rows = side.rows
    ratio = sum(r["r16"] for r in rows) / sum(r["r1"] for r in rows)
    cpu16 = med(r["p16"] for r in rows)
    print(
        f"{side.name}: mif16 {med(r['r16'] for r in rows):.0f}/s plugin {cpu16:.0f}us "
        f"bench {med(r['b16'] for r in rows):.0f}us | mif1 {med(r['r1'] for r in rows):.0f}/s "
        f"plugin {med(r['p1'] for r in rows):.0f}us | ratio median "
        f"{med(r['r16'] / r['r1'] for r in rows):.2f}, of the summed rates {ratio:.2f}"
    )
    return ratio


async def main(args: argparse.Namespace, spin_dir: str) -> None:
    sides = [await start_side("A", None), await start_side(f"B(+{args.extra_us}us)", spin_dir)]
    try:
        for index in range(args.rounds):
            for side in sides if index % 2 == 0 else sides[::-1]:
                r16, p16, b16 = await side.sample(16, args.n16)
                r1, p1, _ = await side.sample(1, args.n1)
                side.rows.append({"r16": r16, "p16": p16, "b16": b16, "r1": r1, "p1": p1})
                print(
                    f"round {index} {side.name}: mif16 {r16:.0f}/s plugin {p16:.0f}us "
                    f"bench {b16:.0f}us | mif1 {r1:.0f}/s plugin {p1:.0f}us | "
                    f"ratio {r16 / r1:.2f}",
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
