"""``bench --memory``: the plugin process's RSS after 10k and after N messages through a trigger."""

from __future__ import annotations

import time
from pathlib import Path

from ..core.names import SUBSCRIBE
from .env import TRIGGER_16, BenchEnv
from .runner import Settings

CHECKPOINT = 10_000
CHUNK = 10_000
ALLOWED_GROWTH_MB = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


async def memory_check(total: int, settings: Settings) -> int:
    """Push ``total`` messages through a max_in_flight 16 trigger; compare RSS at 10k and at the end."""
    stream, subject, durable = TRIGGER_16
    async with BenchEnv(loop=settings.loop, plugin_loop=settings.plugin_loop) as env:
        host = await env.plugin()
        sink = env.sink
        assert sink is not None
        handle = await host.create_trigger(
            SUBSCRIBE, "pipeline:bench-memory", {"consumer": durable, "max_in_flight": 16}
        )
        await env.purge(stream)
        sink.arm(total)
        await host.start_module(handle)
        started = time.monotonic()
        sent = 0
        at_checkpoint = 0.0
        while sent < total:
            # Keep the backlog short: publish a chunk once the trigger is close behind.
            await sink.reach(sent - CHUNK)
            count = min(CHUNK, total - sent)
            await env.fill(subject, count)
            sent += count
            if not at_checkpoint and len(sink.arrivals) >= CHECKPOINT:
                at_checkpoint = rss_mb(host.pid)
                print(
                    f"RSS after {len(sink.arrivals):,} messages: {at_checkpoint:.1f} MB", flush=True
                )
            if sent % 100_000 == 0:
                rate = len(sink.arrivals) / (time.monotonic() - started)
                print(
                    f"  {len(sink.arrivals):,} delivered, {rate:,.0f} msg/s, RSS {rss_mb(host.pid):.1f} MB",
                    flush=True,
                )
        await sink.done.wait()
        final = rss_mb(host.pid)
        await host.stop_module(handle)
        elapsed = time.monotonic() - started
    growth = final - at_checkpoint
    ok = growth <= ALLOWED_GROWTH_MB
    print(
        f"RSS after {total:,} messages: {final:.1f} MB; growth {growth:+.1f} MB "
        f"(allowed {ALLOWED_GROWTH_MB:g}) in {elapsed:.0f}s: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1
