"""Log entries for the engine: CallbackClient.log against the harness's callback server,
and the logging handler that decides which records become entries."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from workflow_eventbus._proto import grpc_broker_pb2 as bpb
from workflow_eventbus.devservers.host import CallbackServer
from workflow_eventbus.plugin.broker import ConnInfoStore
from workflow_eventbus.plugin.callbacks import client as client_module
from workflow_eventbus.plugin.callbacks.client import CallbackClient
from workflow_eventbus.plugin.engine_log import EngineLogHandler, engine_level

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture(params=["h2", "grpc"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[CallbackServer, CallbackClient]]:
    server = CallbackServer()
    await server.start(str(tmp_path / "cb.sock"))
    store = ConnInfoStore()
    await store.put(bpb.ConnInfo(service_id=1, network="unix", address=server.address))
    client = CallbackClient(store, wait=1, transport=request.param, environ={})
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop()


async def test_log_is_sent_once_configured_with_redacted_strings(
    engine: tuple[CallbackServer, CallbackClient],
) -> None:
    server, client = engine
    assert client.log("warn", "too early", {"event": "x"}) is False  # no channel yet
    assert await client.configure(1) == ""
    fields = {"event": "broker.lost", "url": "nats://u:pw123@h:4222", "sequence": 7, "ok": True}
    assert client.log("warn", "lost nats://u:pw123@h:4222", fields) is True
    await until(lambda: len(server.logs) == 1)
    (entry,) = server.logs
    assert entry.level == "warn"
    assert entry.message == "lost nats://u:***@h:4222"
    assert entry.fields == {
        "event": "broker.lost",
        "url": "nats://u:***@h:4222",
        "sequence": 7,
        "ok": True,
    }
    assert client.log_sent == 1 and client.log_dropped == 0


async def test_a_full_queue_drops_and_counts_and_close_ends_the_sender(
    engine: tuple[CallbackServer, CallbackClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = engine
    assert await client.configure(1) == ""
    # Nothing awaits between these calls, so the sender cannot take any: the queue fills.
    results = [client.log("warn", f"m{i}") for i in range(client_module.LOG_QUEUE + 5)]
    assert results.count(False) == 5 and client.log_dropped == 5
    assert await client.flush_logs(10)
    assert len(server.logs) == client_module.LOG_QUEUE
    assert [e.message for e in server.logs][:3] == ["m0", "m1", "m2"]  # in order
    task = client._log_task
    assert task is not None and not task.done()
    await client.close()
    assert task.done() and client._log_task is None
    assert client.log("warn", "after close") is False


async def test_a_missing_engine_fails_the_entry_not_the_caller(tmp_path: Path) -> None:
    store = ConnInfoStore()
    await store.put(bpb.ConnInfo(service_id=1, network="unix", address=str(tmp_path / "none")))
    client = CallbackClient(store, wait=1, environ={})
    try:
        assert await client.configure(1) == ""
        assert client.log("error", "nobody listens")
        await until(lambda: client.log_failed == 1)
    finally:
        await client.close()


class Recorded:
    """Stands in for CallbackClient.log."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, object]]] = []

    def log(self, level: str, message: str, fields: dict[str, object] | None = None) -> bool:
        self.entries.append((level, message, dict(fields or {})))
        return True


async def test_only_records_with_an_event_from_our_loggers_become_entries() -> None:
    recorded = Recorded()
    handler = EngineLogHandler.install(recorded)  # type: ignore[arg-type]
    ours = logging.getLogger("workflow_eventbus.engine.test")
    ours.setLevel(logging.INFO)
    try:
        ours.warning("plain warning, stderr only")
        ours.debug("debug", extra={"event": "too.low"})
        logging.getLogger("elsewhere").warning("x", extra={"event": "not.ours"})
        ours.warning(
            "lost %s", "bus", extra={"event": "broker.lost", "broker": "bus", "obj": Path("/a")}
        )
        ours.info("restored", extra={"event": "broker.restored"})
        ours.error("bad", extra={"event": "e"})
        ours.critical("worse", extra={"event": "c"})
        thread = threading.Thread(
            target=ours.warning, args=("from a thread",), kwargs={"extra": {"event": "threaded"}}
        )
        thread.start()
        thread.join()
        await until(lambda: len(recorded.entries) == 5)
    finally:
        handler.uninstall()
        ours.setLevel(logging.NOTSET)
    levels = [(level, fields["event"]) for level, _, fields in recorded.entries]
    assert levels == [
        ("warn", "broker.lost"),
        ("info", "broker.restored"),
        ("error", "e"),
        ("error", "c"),
        ("warn", "threaded"),
    ]
    _level, message, fields = recorded.entries[0]
    assert message == "lost bus"
    assert fields == {
        "event": "broker.lost",
        "broker": "bus",
        "obj": "/a",
        "logger": "workflow_eventbus.engine.test",
    }
    assert engine_level(logging.CRITICAL) == "error"
