"""The operator commands (status, publish, tail) against a real nats-server and PostgreSQL.

Every command runs as the installed entry point does (a child process). The
brokers are reached with a password in the URL (the NATS server here requires
it; the test PostgreSQL accepts any), and no output of any command may contain
it. Consumers are checked on the broker itself (JetStream API, SQL).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from reliability_helpers import json_lines, make_bus, until

from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.trigger import SubscribeTrigger
from workflow_eventbus.providers.base import AckAction, Delivery, OutboundMessage

PASSWORD = "cli-Secr3t-51"
WRONG = "wrong-Secr3t-52"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def auth_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    """A nats-server that only lets user alice in, with PASSWORD."""
    folder = tmp_path_factory.mktemp("cli-nats")
    conf = folder / "auth.conf"
    conf.write_text(f'authorization {{ user: alice, password: "{PASSWORD}" }}\n')
    server = EmbeddedNats(store_dir=folder / "data", config_file=conf)
    await server.start()
    yield server
    await server.stop()


def _with_password(url: str, user: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url  # an external server's own DSN
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or user}:{PASSWORD}@{host}"))


@dataclass
class Target:
    provider: str
    url: str  # with PASSWORD in it
    schema: str = ""  # pgchannel

    def args(self) -> list[str]:
        return ["--url", self.url, *(["--schema", self.schema] if self.schema else [])]

    def broker(self) -> dict[str, Any]:
        return {"schema": self.schema, "poll_interval": "50ms"} if self.schema else {}


@pytest.fixture(params=["nats", "pgchannel"])
def target(request: pytest.FixtureRequest, auth_nats: EmbeddedNats, pg_dsn: str) -> Target:
    if request.param == "nats":
        return Target("nats", f"nats://alice:{PASSWORD}@127.0.0.1:{auth_nats.port}")
    return Target("pgchannel", _with_password(pg_dsn, "postgres"), f"cli_{uuid.uuid4().hex[:10]}")


async def cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``workflow-plugin-eventbus <args>`` in a child process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workflow_eventbus.cli.main",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    text, errors = out.decode(), err.decode()
    assert PASSWORD not in text + errors and WRONG not in text + errors
    assert proc.returncode is not None
    return proc.returncode, text, errors


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


async def new_bus(target: Target, **kw: Any) -> tuple[EventBus, str]:
    stream = f"CLI_{uuid.uuid4().hex[:10].upper()}"
    bus = await make_bus(
        target.provider,
        target.url,
        stream=stream,
        subjects=[f"{stream.lower()}.>"],
        broker=target.broker(),
        **kw,
    )
    return bus, stream


async def consumers_on_broker(target: Target, stream: str) -> list[str]:
    """The consumer names of ``stream``, asked of the broker directly."""
    if target.provider == "nats":
        nc = await nats.connect(target.url)
        try:
            return sorted(c.name for c in await nc.jsm().consumers_info(stream))
        finally:
            await nc.close()
    query = sql.SQL("SELECT name FROM {} WHERE stream_name = %s ORDER BY name").format(
        sql.Identifier(target.schema, "eventbus_consumers")
    )
    async with await psycopg.AsyncConnection.connect(target.url, autocommit=True) as conn:
        cur = await conn.execute(query, (stream,))
        return [row[0] for row in await cur.fetchall()]


# -- publish and tail ---------------------------------------------------------------
async def test_publish_then_tail_from_start_and_last(target: Target) -> None:
    bus, stream = await new_bus(target)
    a, b = f"{stream.lower()}.a", f"{stream.lower()}.b"
    try:
        code, out, err = await cli("publish", a, "one", "--header", "k=v", "--json", *target.args())
        assert code == 0, err
        (first,) = json_lines(out)
        code, out, err = await cli("publish", b, "other", "--count", "2", *target.args())
        assert code == 0, err
        assert out.splitlines()[0].startswith(f"published {b}: stream {stream} #")
        assert len(out.splitlines()) == 2
        code, out, err = await cli(
            "publish", a, "-", "--msg-id", "m", "--count", "2", "--json", *target.args(),
            stdin=b"from stdin",
        )  # fmt: skip
        assert code == 0, err
        stdin_rows = json_lines(out)
        assert [r["msg_id"] for r in stdin_rows] == ["m-1", "m-2"]
        assert not any(r["duplicate"] for r in [first, *stdin_rows])
        code, out, err = await cli(
            "publish", a, "-", "--msg-id", "m", "--count", "2", "--json", *target.args(),
            stdin=b"from stdin",
        )  # fmt: skip
        assert code == 0, err
        again = json_lines(out)
        assert all(r["duplicate"] for r in again)
        assert [r["sequence"] for r in again] == [r["sequence"] for r in stdin_rows]

        code, out, err = await cli(
            "tail", a, "--from-start", "--count", "3", "--json", *target.args()
        )
        assert code == 0, err
        rows = json_lines(out)
        assert [r["data"] for r in rows] == ["one", "from stdin", "from stdin"]
        assert [r["sequence"] for r in rows] == [first["sequence"]] + [
            r["sequence"] for r in stdin_rows
        ]
        assert rows[0]["headers"] == {"k": "v"} and {r["subject"] for r in rows} == {a}
        assert {r["stream"] for r in rows} == {stream}

        code, out, err = await cli(
            "tail", a, "--last", "2", "--count", "2", "--json", *target.args()
        )
        assert code == 0, err
        assert [r["sequence"] for r in json_lines(out)] == [r["sequence"] for r in stdin_rows]
        code, out, err = await cli(
            "tail", f"{stream.lower()}.>", "--last", "3", "--count", "3", *target.args()
        )
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == 3
        assert lines[0].startswith(f"[{stream} #") and f"] {b} " in lines[0]
        assert lines[1].endswith(": from stdin") and lines[2].endswith(": from stdin")
        assert await consumers_on_broker(target, stream) == []  # every tail removed its own
    finally:
        await bus.close()


_READY = re.compile(r"\(consumer (\S+), removed on exit\)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_live_tail_prints_each_new_message_once_then_cleans_up(
    target: Target, sig: signal.Signals
) -> None:
    bus, stream = await new_bus(target)
    subject = f"{stream.lower()}.live"
    provider = bus.provider("bus")
    await provider.publish(OutboundMessage(subject, b"before"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workflow_eventbus.cli.main", "tail", subject, "--json",
        *target.args(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        found = _READY.search(ready)
        assert found, ready
        name = found.group(1)
        assert await consumers_on_broker(target, stream) == [name]

        for text in (b"one", b"two", b"marker"):
            await provider.publish(OutboundMessage(subject, text, {"n": text.decode()}))
        seen = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 30)) for _ in range(3)]
        # Only what was published while it ran, each once, in order ("before" is old).
        assert [r["data"] for r in seen] == ["one", "two", "marker"]
        assert [r["headers"] for r in seen] == [{"n": "one"}, {"n": "two"}, {"n": "marker"}]

        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert await proc.stdout.read() == b""
        rest = (await proc.stderr.read()).decode()
        assert PASSWORD not in ready + rest and "Traceback" not in rest
        assert await consumers_on_broker(target, stream) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await bus.close()


# -- status ------------------------------------------------------------------------
async def _fetch(provider: Any, stream: str, consumer: str, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(30):
        while len(got) < n:
            got += await provider.fetch(stream, consumer, n - len(got), 1.0)
    return got


async def test_status_counts_after_publishing_consuming_and_dead_lettering(
    target: Target,
) -> None:
    bus, stream = await new_bus(target)
    good, bad = f"{stream.lower()}.good", f"{stream.lower()}.bad"
    worker = bus.create_module(
        "eventbus.consumer",
        "worker",
        {"name": "worker", "stream_name": stream, "filter_subject": good, "ack_wait": "60s"},
    )
    failer = bus.create_module(
        "eventbus.consumer",
        "failer",
        {"name": "failer", "stream_name": stream, "filter_subject": bad, "max_deliver": 1},
    )
    for module in (worker, failer):
        await module.start()
    provider = bus.provider("bus")
    try:
        code, out, err = await cli("publish", good, "g", "--count", "6", "--json", *target.args())
        assert code == 0, err
        published = {row["sequence"] for row in json_lines(out)}
        assert len(published) == 6
        code, out, err = await cli("publish", bad, "b", "--count", "2", *target.args())
        assert code == 0, err

        first = await _fetch(provider, stream, "worker", 4)
        await provider.settle([first[0].ack_token, first[1].ack_token], AckAction.ACK)
        await provider.settle([first[2].ack_token], AckAction.NAK)
        rest = await _fetch(provider, stream, "worker", 3)  # the nak'ed one again, 5 and 6
        never = published - {d.sequence for d in first}
        assert {d.sequence for d in rest} == {first[2].sequence} | never
        assert {d.sequence: d.delivery_count for d in rest}[first[2].sequence] == 2
        await provider.confirm()

        async def fails(data: dict[str, Any]) -> None:
            raise RuntimeError("cannot handle it")

        trigger = SubscribeTrigger.from_trigger_config(
            bus, "pipeline:fail", {"name": "failer"}, fails
        )
        await trigger.start()
        try:
            sub = trigger.subscription
            assert sub is not None
            await until(lambda: sub.stats.dead_lettered == 2, what="two dead letters")
        finally:
            await trigger.stop()

        code, out, err = await cli("status", "--stream", stream, "--json", *target.args())
        assert code == 0, err
        report = json.loads(out)
        assert report["provider"] == target.provider
        (row,) = report["streams"]
        assert (row["name"], row["messages"], row["consumers"]) == (stream, 8, 2)
        assert row["subjects"] == [f"{stream.lower()}.>"] and row["last_published"]
        by_name = {c["name"]: c for c in report["consumers"]}
        assert set(by_name) == {"worker", "failer"}
        numbers = ("pending", "ack_pending", "redelivered", "dead_letters")
        assert [by_name["worker"][k] for k in numbers] == [0, 4, 1, 0]
        assert [by_name["failer"][k] for k in numbers] == [0, 0, 0, 2]
        assert by_name["worker"]["filter_subject"] == good
        assert by_name["worker"]["last_active"]

        code, out, err = await cli("status", "--stream", stream, *target.args())
        assert code == 0, err
        (line,) = [x for x in out.splitlines() if " worker " in x]
        assert re.search(r"\b0\D+4\D+1\D+0\b", line.split(good, 1)[1]), line
    finally:
        await bus.close()


# -- errors ------------------------------------------------------------------------
async def test_unreachable_brokers_are_one_line_naming_the_setting(target: Target) -> None:
    url = (
        f"nats://alice:{PASSWORD}@127.0.0.1:1"
        if target.provider == "nats"
        else f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/eventbus"
    )
    code, out, err = await cli("status", "--url", url, "--connect-timeout", "2s")
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert "127.0.0.1:1" in line and "dsn" in line


async def test_wrong_nats_password_is_refused_without_showing_it(auth_nats: EmbeddedNats) -> None:
    url = f"nats://alice:{WRONG}@127.0.0.1:{auth_nats.port}"
    code, _, err = await cli("status", "--url", url, "--connect-timeout", "5s")
    assert code == 1
    assert "alice:***@" in one_error_line(err)


async def test_mistakes_are_one_line_with_the_fix(target: Target) -> None:
    bus, stream = await new_bus(target)
    try:
        code, _, err = await cli("tail", "nowhere.at.all", *target.args())
        line = one_error_line(err)
        assert code == 1 and "SUBJECT" in line and stream in line and "--stream" in line
        code, _, err = await cli("publish", "nowhere.at.all", "x", *target.args())
        assert code == 1 and "nowhere.at.all" in one_error_line(err)
        code, _, err = await cli("publish", f"{stream.lower()}.x", "--header", "novalue")
        assert code == 1
        assert one_error_line(err) == (
            "error: --header: expected KEY=VALUE (got 'novalue'); write e.g. --header source=cli"
        )
        code, _, err = await cli("status")
        assert code == 1 and "--url: is required without --config" in one_error_line(err)
        code, _, err = await cli("tail", "bad..subject", *target.args())
        assert code == 1 and "SUBJECT" in one_error_line(err)
    finally:
        await bus.close()


async def test_tail_refuses_a_work_queue_stream(target: Target) -> None:
    bus, stream = await new_bus(target, stream_extra={"retention_policy": "workqueue"})
    try:
        code, _, err = await cli("tail", f"{stream.lower()}.>", *target.args())
        assert code == 1 and "work-queue" in one_error_line(err)
        assert await consumers_on_broker(target, stream) == []
    finally:
        await bus.close()


async def test_the_broker_of_an_app_config_with_env_references(
    target: Target, tmp_path: Path
) -> None:
    bus, stream = await new_bus(target)
    extra = (
        "deploy_target: self_hosted"
        if target.provider == "nats"
        else f"broker_target: in_process\n      schema: {target.schema}"
    )
    app = tmp_path / "app.yaml"
    app.write_text(
        f"""modules:
  - name: events
    type: eventbus.broker
    config:
      provider: {target.provider}
      dsn: "${{CLI_TEST_BROKER_URL}}"
      {extra}
"""
    )
    try:
        env = {**os.environ, "CLI_TEST_BROKER_URL": target.url}
        code, out, err = await cli("status", "--config", str(app), "--json", env=env)
        assert code == 0, err
        report = json.loads(out)
        assert report["broker"] == "events" and stream in [s["name"] for s in report["streams"]]
        assert "***" in report["url"]
        unset = {k: v for k, v in os.environ.items() if k != "CLI_TEST_BROKER_URL"}
        code, _, err = await cli("status", "--config", str(app), env=unset)
        line = one_error_line(err)
        assert code == 1 and 'eventbus.broker "events": dsn' in line
        assert "CLI_TEST_BROKER_URL" in line and "--url" in line
    finally:
        await bus.close()


async def test_status_of_a_missing_stream_names_the_flag(target: Target) -> None:
    code, _, err = await cli("status", "--stream", "NO_SUCH_STREAM", *target.args())
    assert code == 1 and "--stream" in one_error_line(err)


def test_publish_builds_messages_before_connecting() -> None:
    """The arguments are checked without a broker (in-process)."""
    from workflow_eventbus.cli import publish
    from workflow_eventbus.cli.main import build_parser

    ns = build_parser().parse_args(
        ["publish", "a.b", "--count", "3", "--msg-id", "x", "--header", "k=v=w", "--url", "x"]
    )
    built = publish.messages(ns, b"p")
    assert [m.msg_id for m in built] == ["x-1", "x-2", "x-3"]
    assert all(m.headers == {"k": "v=w"} and m.subject == "a.b" for m in built)
