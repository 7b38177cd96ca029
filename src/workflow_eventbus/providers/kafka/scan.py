"""Reading a range of a partition without a consumer group (registry-free scans).

Dedup loading, dead-letter listing, pending counts and stream status all open a
groupless consumer, read ``[start, end)`` of some partitions and stop it again:
:func:`scanner` owns that consumer (stopped even when starting it fails) and
:func:`read_range` reads one range, until the position reaches ``end`` (an empty
fetch is not the end: compacted or transactional logs leave gaps) or nothing
arrives for ``stall`` seconds (BrokerUnavailableError).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ...core.errors import BrokerUnavailableError

FETCH_SLICE_MS = 1000  # one fetch of a scan waits at most this long

Record = Any  # aiokafka's ConsumerRecord (untyped)


@asynccontextmanager
async def scanner(options: dict[str, Any]) -> AsyncIterator[AIOKafkaConsumer]:
    """A started groupless consumer, stopped on leaving (also when start fails)."""
    reader = AIOKafkaConsumer(enable_auto_commit=False, **options)
    try:
        await reader.start()
        yield reader
    finally:
        await reader.stop()


async def read_range(
    reader: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int | None,
    end: int,
    *,
    stall: float,
) -> AsyncIterator[Record]:
    """The records of ``tp`` from ``start`` (None: the beginning) up to ``end``."""
    reader.assign([tp])
    if start is None:
        await reader.seek_to_beginning(tp)
    else:
        reader.seek(tp, start)
    moved = time.monotonic()
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=FETCH_SLICE_MS)
        records = batch.get(tp, [])
        if records:
            moved = time.monotonic()
        elif time.monotonic() - moved > stall:
            raise BrokerUnavailableError(
                f"kafka: reading {tp.topic}[{tp.partition}] up to offset {end} made no "
                f"progress for {stall:g}s (connect_timeout); check that the broker is reachable"
            )
        for rec in records:
            if rec.offset >= end:
                return
            yield rec
