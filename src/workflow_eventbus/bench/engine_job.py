"""The engine bench's job seen from outside: publish events, count the derived ones.

Every event is a 128-byte-class JSON object with a unique number ``n``; every side
of the bench republishes something that still starts with that number (ours and
FastStream the same bytes, the built-in ``step.publish`` the trigger data as JSON,
keys sorted, so ``"n"`` comes first). A core NATS subscription on the derived
subject counts each ``n``: first sightings, duplicates, and when each was first
seen. The publisher is asynchronous (``publish_async`` in chunks, acks gathered)
so it is never what bounds a row.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .core import percentile
from .engine_apps import IN_SUBJECT, OUT_SUBJECT

clock = time.perf_counter
_N = re.compile(rb'"n": ?(\d+)')
_PAD = "x" * 96
CHUNK = 1000
_POLL = 0.02


def event(n: int) -> bytes:
    return f'{{"n": {n}, "customer": "c-42", "pad": "{_PAD}"}}'.encode()


class Derived:
    """Counts the derived events by ``n`` (a core subscription, started before publishing)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.first_seen: dict[int, float] = {}
        self.total = 0
        self.last_change = clock()

    async def on_message(self, msg: Msg) -> None:
        found = _N.search(msg.data)
        if found is None:
            return
        n = int(found.group(1))
        self.total += 1
        count = self.counts.get(n, 0)
        self.counts[n] = count + 1
        if not count:
            self.first_seen[n] = clock()
        self.last_change = clock()

    def unique_in(self, ids: range) -> int:
        counts = self.counts
        return sum(1 for n in ids if n in counts)

    def duplicates_in(self, ids: range) -> int:
        counts = self.counts
        return sum(counts[n] - 1 for n in ids if n in counts)


async def subscribe(nc: NatsClient, derived: Derived) -> None:
    """Count the derived events into ``derived`` for as long as ``nc`` is open."""
    await nc.subscribe(OUT_SUBJECT, cb=derived.on_message, pending_msgs_limit=1_000_000)
    await nc.flush()


async def publish_all(nc: NatsClient, ids: range) -> None:
    """Publish the events of ``ids`` to JetStream, pipelined, every ack awaited."""
    js = nc.jetstream()
    for start in range(ids.start, ids.stop, CHUNK):
        futures = [
            await js.publish_async(IN_SUBJECT, event(n))
            for n in range(start, min(start + CHUNK, ids.stop))
        ]
        await asyncio.gather(*futures)


async def wait_seen(derived: Derived, ids: range, seconds: float, quiet: float = 0.0) -> None:
    """Until every event of ``ids`` was derived, ``seconds`` pass, or (``quiet`` > 0)
    nothing new arrived for ``quiet`` seconds."""
    deadline = clock() + seconds
    want = len(ids)
    while clock() < deadline:
        if derived.unique_in(ids) >= want:
            return
        if quiet and clock() - derived.last_change > quiet:
            return
        await asyncio.sleep(_POLL)


@dataclass(slots=True)
class Burst:
    sent: int
    seen: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.seen / self.elapsed if self.elapsed > 0 else 0.0


async def burst(nc: NatsClient, derived: Derived, ids: range, seconds: float) -> Burst:
    """Publish ``ids`` at once; rate = events derived / (last first sighting - start)."""
    started = clock()
    publishing = asyncio.create_task(publish_all(nc, ids))
    try:
        await wait_seen(derived, ids, seconds)
    finally:
        await publishing
    seen = [derived.first_seen[n] for n in ids if n in derived.first_seen]
    end = max(seen) if seen else clock()
    return Burst(len(ids), len(seen), end - started)


async def publish_paced(nc: NatsClient, ids: range, interval: float) -> dict[int, float]:
    """Publish ``ids`` one every ``interval`` s (pacing against the clock, so a slow
    send is caught up); returns when each was sent, once the broker acked them all."""
    js = nc.jetstream()
    sent: dict[int, float] = {}
    futures = []
    next_at = clock()
    for n in ids:
        sent[n] = clock()
        futures.append(await js.publish_async(IN_SUBJECT, event(n)))
        next_at += interval
        delay = next_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.gather(*futures)
    return sent


async def paced_latency(
    nc: NatsClient, derived: Derived, ids: range, interval: float, seconds: float
) -> list[float]:
    """One event every ``interval`` s (below every row's rate); publish -> first
    sighting of its derived event, in seconds."""
    sent = await publish_paced(nc, ids, interval)
    await wait_seen(derived, ids, seconds)
    return sorted(derived.first_seen[n] - sent[n] for n in ids if n in derived.first_seen)


def ms(latencies: list[float], q: float) -> float:
    """Percentile ``q`` in milliseconds (the latencies in any order)."""
    return percentile(sorted(latencies), q) * 1000.0


@dataclass(slots=True)
class Loss:
    sent: int
    derived: int
    unique: int
    outage: float  # seconds between the stop and the restarted side being ready
    duplicates: int = field(init=False)
    lost: int = field(init=False)

    def __post_init__(self) -> None:
        self.duplicates = self.derived - self.unique
        self.lost = self.sent - self.unique


async def loss_run(
    nc: NatsClient,
    derived: Derived,
    ids: range,
    *,
    stop: Callable[[], Awaitable[None]],
    start: Callable[[], Awaitable[None]],
    down: float,
    spread: float,
    settle: float,
) -> Loss:
    """Publish ``ids`` evenly over ``spread`` s; a quarter of the way in, ``stop`` the
    consumer side, keep it down ``down`` s, ``start`` it again; then wait until every
    event was derived or nothing new came for ``settle`` s."""
    interval = spread / max(len(ids), 1)
    publishing = asyncio.create_task(publish_paced(nc, ids, interval))
    try:
        await asyncio.sleep(spread / 4)  # the outage starts a quarter into the stream
        stopped_at = clock()
        await stop()
        await asyncio.sleep(max(down - (clock() - stopped_at), 0.0))
        await start()
        outage = clock() - stopped_at
    finally:
        await publishing
    await wait_seen(derived, ids, 2 * settle + 60.0, quiet=settle)
    return Loss(
        len(ids), sum(derived.counts.get(n, 0) for n in ids), derived.unique_in(ids), outage
    )


# -- the ingest rows: HTTP POSTs over keep-alive connections ------------------------


async def http_load(
    port: int, bodies: int, connections: int, seconds: float, first: int
) -> tuple[int, float, list[float]]:
    """POST ``bodies`` events to the route over ``connections`` keep-alive HTTP/1.1
    connections; returns (answered 2xx, elapsed s, sorted latencies in s)."""
    from .engine_apps import ROUTE

    latencies: list[float] = []
    counter = iter(range(first, first + bodies))
    deadline = clock() + seconds
    ok = 0

    async def client() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in counter:
                if clock() > deadline:
                    return
                body = event(n)
                head = (
                    f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                began = clock()
                writer.write(head.encode() + body)
                status, length = await _read_response_head(reader)
                await reader.readexactly(length)
                latencies.append(clock() - began)
                if 200 <= status < 300:
                    ok += 1
        finally:
            writer.close()

    started = clock()
    await asyncio.gather(*(client() for _ in range(connections)))
    return ok, clock() - started, sorted(latencies)


async def _read_response_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return status, length
