"""Helpers shared by tests/integration/test_reliability_* and tests/chaos."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workflow_eventbus.engine.bus import EventBus

_ids = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_ids)}X{int(time.time() * 1000) % 1_000_000}"


async def until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` (sync or async) until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.02)


async def make_bus(
    provider: str,
    url: str,
    *,
    stream: str,
    subjects: list[str],
    consumer: Mapping[str, Any] | None = None,
    broker: Mapping[str, Any] | None = None,
    stream_extra: Mapping[str, Any] | None = None,
) -> EventBus:
    """An EventBus with broker ``bus``, the stream, and (optionally) one consumer, started."""
    bus = EventBus(environ={})
    broker_cfg: dict[str, Any] = {"provider": provider, "dsn": url, **(broker or {})}
    if provider == "nats":
        broker_cfg.setdefault("deploy_target", "self_hosted")
    if provider == "pgchannel":
        broker_cfg.setdefault("broker_target", "in_process")
    mods = [
        bus.create_module("eventbus.broker", "bus", broker_cfg),
        bus.create_module(
            "eventbus.stream",
            "stream",
            {"name": stream, "subjects": subjects, "broker_ref": "bus", **(stream_extra or {})},
        ),
    ]
    if consumer is not None:
        mods.append(
            bus.create_module(
                "eventbus.consumer",
                "consumer",
                {"stream_name": stream, "broker_ref": "bus", **consumer},
            )
        )
    for module in mods:
        await module.start()
    return bus


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``workflow-plugin-eventbus <args>`` in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workflow_eventbus.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class Tally:
    """Figures of one fault-injection run (see tests/chaos)."""

    scenario: str
    published: int = 0  # publish attempts
    broker_acked: set[int] = field(default_factory=set)  # ids the broker acknowledged
    delivered: list[int] = field(default_factory=list)  # ids as handlers saw them
    processed: set[int] = field(default_factory=set)  # ids whose handler succeeded
    dead_lettered: set[int] = field(default_factory=set)  # ids found in the dead letters
    publish_errors: int = 0  # failed publish attempts (retried with the same msg id)

    @property
    def duplicates(self) -> int:
        return len(self.delivered) - len(set(self.delivered))

    @property
    def lost(self) -> int:
        return len(self.broker_acked - self.processed - self.dead_lettered)

    def note(self, i: int) -> None:
        self.delivered.append(i)

    def row(self) -> str:
        return (
            f"| {self.scenario:<34} | {self.published:>9} | {len(self.broker_acked):>12} | "
            f"{len(self.delivered):>9} | {self.duplicates:>10} | {self.lost:>4} |"
        )

    @staticmethod
    def header() -> str:
        return (
            f"| {'scenario':<34} | {'published':>9} | {'broker-acked':>12} | "
            f"{'delivered':>9} | {'duplicates':>10} | {'lost':>4} |\n"
            f"|{'-' * 36}|{'-' * 11}|{'-' * 14}|{'-' * 11}|{'-' * 12}|{'-' * 6}|"
        )


async def publish_all(
    provider: Callable[[], Any],
    subject: str,
    tally: Tally,
    ids: range,
    *,
    give_up_after: float = 60.0,
) -> None:
    """Publish ``{"i": id}`` for each id, retrying failures with the same msg id."""
    from workflow_eventbus.core.errors import EventbusError
    from workflow_eventbus.providers.base import OutboundMessage

    for i in ids:
        tally.published += 1
        msg = OutboundMessage(subject, json.dumps({"i": i}).encode(), msg_id=f"{subject}-{i}")
        deadline = time.monotonic() + give_up_after
        while time.monotonic() < deadline:
            try:
                await provider().publish(msg)
            except EventbusError:
                tally.publish_errors += 1
                await asyncio.sleep(0.05)  # retry pause while the broker is down
                continue
            tally.broker_acked.add(i)
            break


def consumer_into(tally: Tally) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """A subscribe-trigger handler that notes each ``{"i": id}`` body as processed."""

    async def handler(data: dict[str, Any]) -> None:
        i = data["body"]["i"]
        tally.note(i)
        tally.processed.add(i)

    return handler
