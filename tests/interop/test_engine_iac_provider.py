"""The plugin as the engine's IaC provider: the real wfctl plans, applies, re-plans,
sees hand-made drift and destroys infra.eventbus_* resources through it.

One app config (``iac.provider {provider: eventbus}``, a filesystem ``iac.state``)
declares a self-hosted server, a stream and a consumer. Every step is checked on
the broker itself (nats-py) or on the process table, not only in wfctl's output.
wfctl's diff cache is off (``WFCTL_DIFFCACHE=disabled``): with it on, a plan whose
config and state did not change reuses the previous Diff answer and would not ask
the broker (docs/iac.md says so too).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc_tools
import nats
import pytest
from engine_harness import engine_binaries, free_port, run_wfctl
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from nats.js.api import StorageType

from workflow_eventbus._proto import iac_pb2 as ipb
from workflow_eventbus.devservers.engine import alive
from workflow_eventbus.plugin.iac import server as supervisor

pytestmark = pytest.mark.interop

# The state and the provider of both apps; then each one's own provider settings.
HEADER = """\
modules:
  - name: state
    type: iac.state
    config:
      backend: filesystem
      directory: {state}
  - name: bus_iac
    type: iac.provider
    config:
      provider: eventbus
"""

APP = (
    HEADER
    + """\
      connect_timeout: 2s
  - name: bus_server
    type: infra.eventbus_server
    config:
      provider: bus_iac
      data_dir: {data_dir}
      port: {port}
  - name: orders
    type: infra.eventbus_stream
    config:
      provider: bus_iac
      depends_on: [bus_server]
      url: nats://127.0.0.1:{port}
      name: ORDERS
      subjects: ["orders.>"]
      max_age: 1h
  - name: worker
    type: infra.eventbus_consumer
    config:
      provider: bus_iac
      depends_on: [orders]
      url: nats://127.0.0.1:{port}
      name: worker
      stream_name: ORDERS
      max_deliver: 5
"""
)


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"


class Infra:
    def __init__(self, engine_bin: Path, plugins_dir: Path, folder: Path) -> None:
        self.engine_bin, self.plugins_dir = engine_bin, plugins_dir
        self.data_dir = folder / "nats"
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.config = folder / "app.yaml"
        self.config.write_text(
            APP.format(state=folder / "state", data_dir=self.data_dir, port=self.port)
        )

    def wfctl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        flags = ["-c", str(self.config)]
        if command != "outputs":
            flags += ["--plugin-dir", str(self.plugins_dir)]
        done = run_wfctl(self.engine_bin, "infra", command, *flags, *rest)
        if ok:
            assert done.returncode == 0, _explain(done)
        return done

    async def destroy(self) -> None:
        """``wfctl infra destroy`` and wait until the server process is gone."""
        pid = self.server_pid()
        self.wfctl("destroy", "-y")
        await _wait_gone(pid)

    def server_pid(self) -> int:
        record = supervisor.read_record(self.data_dir)
        assert record is not None, f"no {supervisor.STATE_FILE} in {self.data_dir}"
        return record.pid


@pytest.fixture
async def infra(
    engine_bin: Path, plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Infra]:
    monkeypatch.setenv("WFCTL_DIFFCACHE", "disabled")
    made = Infra(engine_bin, plugins_dir, tmp_path)
    yield made
    await supervisor.stop(made.data_dir, grace=5.0)  # only if a step failed before destroy


async def _stream_config(url: str) -> dict[str, object]:
    nc = await nats.connect(url)
    try:
        info = await nc.jsm().stream_info("ORDERS")
        consumer = await nc.jsm().consumer_info("ORDERS", "worker")
        return {
            "subjects": info.config.subjects,
            "max_age": info.config.max_age,
            "max_deliver": consumer.config.max_deliver,
        }
    finally:
        await nc.close()


async def _apply_makes_the_worker_again(infra: Infra, nc: nats.NATS) -> None:
    """``wfctl apply`` recreates the consumer a deleted stream took, as declared."""
    infra.wfctl("apply", "-y")
    assert (await nc.jsm().consumer_info("ORDERS", "worker")).config.max_deliver == 5


async def _change_by_hand(url: str) -> None:
    nc = await nats.connect(url)
    try:
        info = await nc.jsm().stream_info("ORDERS")
        info.config.max_age = 7200.0
        await nc.jsm().update_stream(info.config)
    finally:
        await nc.close()


RUNTIME_APP = """\
name: iac-runtime
modules:
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: self_hosted
      dsn: ${BUS_SERVER_URL}
pipelines:
  place-order:
    steps:
      - name: prepare
        type: step.set
        config:
          values:
            payload: "eyJvcmRlciI6ICJvcmQtMSJ9"
      - name: publish
        type: step.eventbus.publish
        config:
          subject: orders.created
"""


async def _publish_through_outputs(infra: Infra, monkeypatch: pytest.MonkeyPatch) -> None:
    done = infra.wfctl("outputs", "-f", "env")
    exported = dict(shlex.split(line)[0].split("=", 1) for line in done.stdout.splitlines())
    assert exported["BUS_SERVER_URL"] == infra.url, _explain(done)
    monkeypatch.setenv("BUS_SERVER_URL", exported["BUS_SERVER_URL"])
    app = infra.config.with_name("runtime.yaml")
    app.write_text(RUNTIME_APP)
    args = ("pipeline", "run", "-c", str(app), "-p", "place-order")
    done = run_wfctl(infra.engine_bin, *args, "--plugin-dir", str(infra.plugins_dir))
    assert "Pipeline completed successfully" in done.stdout, _explain(done)
    nc = await nats.connect(infra.url)
    try:
        assert (await nc.jsm().stream_info("ORDERS")).state.messages == 1
    finally:
        await nc.close()


async def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while alive(pid):
        assert asyncio.get_running_loop().time() < deadline, f"pid {pid} still runs"
        await asyncio.sleep(0.05)


async def test_plan_apply_plan_drift_destroy_loop(
    infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1. plan on empty state: three creates, nothing touched yet.
    done = infra.wfctl("plan")
    assert "Plan: 3 to create, 0 to update, 0 to replace, 0 to destroy." in done.stdout, _explain(
        done
    )
    assert not infra.data_dir.exists()

    # 2. apply: the server runs after wfctl (and the plugin) exited; stream and
    # consumer exist on it with the declared settings.
    done = infra.wfctl("apply", "-y")
    assert "✓ worker (infra.eventbus_consumer)" in done.stdout, _explain(done)
    pid = infra.server_pid()
    assert alive(pid)
    assert await _stream_config(infra.url) == {
        "subjects": ["orders.>"],
        "max_age": 3600.0,
        "max_deliver": 5,
    }

    done = infra.wfctl("status")
    for name in ("bus_server", "orders", "worker"):
        assert any(
            line.split()[:1] == [name] and line.split()[-1] == "running"
            for line in done.stdout.splitlines()
        ), _explain(done)

    # 3. a second plan asks the broker through Diff and finds nothing to do;
    # a second apply is a no-op that keeps the same server process.
    done = infra.wfctl("plan")
    assert "No changes. Infrastructure is up-to-date." in done.stdout, _explain(done)
    done = infra.wfctl("apply", "-y")
    assert "No changes" in done.stdout, _explain(done)
    assert infra.server_pid() == pid

    # 4. a stream changed by hand is an update in the next plan; apply puts it back.
    await _change_by_hand(infra.url)
    done = infra.wfctl("plan")
    assert "~ update  orders  (infra.eventbus_stream)" in done.stdout, _explain(done)
    assert "Plan: 0 to create, 1 to update, 0 to replace, 0 to destroy." in done.stdout
    infra.wfctl("apply", "-y")
    assert (await _stream_config(infra.url))["max_age"] == 3600.0

    # 5. a server that died (killed by hand) is planned back and restarted on its port.
    os.kill(pid, signal.SIGKILL)
    await _wait_gone(pid)
    done = infra.wfctl("plan")
    assert "~ update  bus_server  (infra.eventbus_server)" in done.stdout, _explain(done)
    # stream and consumer cannot be compared while their broker is down: updates too
    assert "Plan: 0 to create, 3 to update" in done.stdout, _explain(done)
    infra.wfctl("apply", "-y")
    restarted = infra.server_pid()
    assert restarted != pid and alive(restarted)
    assert (await _stream_config(infra.url))["subjects"] == ["orders.>"]  # file store kept

    # 6. the outputs reach an app's eventbus.broker dsn: `wfctl infra outputs -f env`
    # gives BUS_SERVER_URL, the engine fills ${BUS_SERVER_URL} in, a publish lands.
    await _publish_through_outputs(infra, monkeypatch)

    # 7. destroy removes consumer, stream and server; no process, no data dir left.
    done = infra.wfctl("destroy", "-y")
    assert "✓ destroyed bus_server" in done.stdout, _explain(done)
    await _wait_gone(restarted)
    assert not infra.data_dir.exists()
    done = infra.wfctl("plan")
    assert "Plan: 3 to create" in done.stdout, _explain(done)


def test_verify_capabilities_finds_every_declared_iac_service(
    engine_bin: Path, plugins_dir: Path
) -> None:
    """plugin.json's iacServices equal the services the running plugin registers:
    a declared one missing fails the command, an undeclared one is a WARN line."""
    folder = plugins_dir / "workflow-plugin-eventbus"
    binary = folder / "workflow-plugin-eventbus"
    declared = json.loads((folder / "plugin.json").read_text())["iacServices"]
    assert "workflow.plugin.external.iac.ResourceDriver" in declared
    args = ("plugin", "verify-capabilities", "--binary", str(binary), str(folder))
    done = run_wfctl(engine_bin, *args)
    assert done.returncode == 0, _explain(done)
    assert "iacServices" not in done.stderr, _explain(done)


def test_wfctl_validate_knows_the_resource_types(infra: Infra) -> None:
    args = ("validate", "--plugin-dir", str(infra.plugins_dir), "--allow-no-entry-points")
    done = run_wfctl(infra.engine_bin, *args, str(infra.config))
    assert done.returncode == 0, _explain(done)
    assert f"PASS {infra.config}" in done.stdout, _explain(done)


async def test_a_stream_deleted_by_hand_is_a_ghost_for_drift_and_recreated_by_apply(
    infra: Infra,
) -> None:
    infra.wfctl("apply", "-y")
    done = infra.wfctl("drift")
    assert "GHOST" not in done.stdout, _explain(done)
    nc = await nats.connect(infra.url)
    try:
        await nc.jsm().delete_stream("ORDERS")  # takes its consumer with it
        done = infra.wfctl("drift", ok=False)
        assert done.returncode != 0, _explain(done)
        assert "GHOST    orders" in done.stdout, _explain(done)
        assert "GHOST    worker" in done.stdout, _explain(done)
        done = infra.wfctl("plan")
        assert "Plan: 0 to create, 2 to update" in done.stdout, _explain(done)
        await _apply_makes_the_worker_again(infra, nc)
    finally:
        await nc.close()
    await infra.destroy()


async def test_a_setting_jetstream_cannot_change_is_a_replace_and_consumers_follow(
    infra: Infra,
) -> None:
    infra.wfctl("apply", "-y")
    infra.config.write_text(
        infra.config.read_text().replace(
            "      max_age: 1h\n", "      max_age: 1h\n      storage: memory\n"
        )
    )
    done = infra.wfctl("plan")
    assert "replace  orders  (infra.eventbus_stream)" in done.stdout, _explain(done)
    assert "Plan: 0 to create, 0 to update, 1 to replace" in done.stdout, _explain(done)
    infra.wfctl("apply", "-y")
    nc = await nats.connect(infra.url)
    try:
        assert (await nc.jsm().stream_info("ORDERS")).config.storage == StorageType.MEMORY
        # Deleting the stream took its consumer: the next plan recreates it.
        done = infra.wfctl("plan")
        assert "~ update  worker  (infra.eventbus_consumer)" in done.stdout, _explain(done)
        await _apply_makes_the_worker_again(infra, nc)
    finally:
        await nc.close()
    done = infra.wfctl("plan")
    assert "No changes." in done.stdout, _explain(done)
    await infra.destroy()


def test_a_reference_to_the_servers_output_arrives_empty_and_is_named(infra: Infra) -> None:
    """wfctl v0.85.4 fills ${...} from the environment before a resource's config
    reaches the plugin, so ${bus_server.url} is "" (docs/iac.md says so)."""
    text = infra.config.read_text().replace(f"url: {infra.url}", "url: ${bus_server.url}")
    infra.config.write_text(text)
    done = infra.wfctl("apply", "-y", ok=False)
    assert done.returncode != 0
    assert 'infra.eventbus_stream "orders": url: is required (or came empty' in done.stdout, (
        _explain(done)
    )


def test_a_relative_data_dir_is_refused_with_the_setting_and_the_fix(infra: Infra) -> None:
    text = infra.config.read_text().replace(f"data_dir: {infra.data_dir}", "data_dir: nats")
    infra.config.write_text(text[: text.index("  - name: orders")])  # the server alone
    done = infra.wfctl("apply", "-y", ok=False)
    assert done.returncode != 0
    assert 'infra.eventbus_server "bus_server".data_dir: must be an absolute path' in (
        done.stdout + done.stderr
    ), _explain(done)


def _engine_iac_descriptors(tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    """The engine's own iac.proto (from the Go module cache interop/build.sh filled),
    compiled here."""
    version = (engine_binaries() / "VERSION").read_text().strip()
    go = shutil.which("go") or "/usr/local/go/bin/go"
    cache = subprocess.run(
        [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    folder = Path(cache) / f"github.com/!go!code!alone/workflow@{version}/plugin/external/proto"
    assert (folder / "iac.proto").is_file(), (
        f"{folder}/iac.proto is missing: run WORKFLOW_INTEROP_REBUILD=1 bash interop/build.sh"
    )
    out = tmp_path / "engine_iac.bin"
    include = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(
        ["protoc", f"-I{folder}", f"-I{include}", f"--descriptor_set_out={out}", "iac.proto"]
    )
    assert code == 0, "protoc could not compile the engine's iac.proto"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return next(f for f in files.file if f.name == "iac.proto")


def test_our_iac_proto_has_the_engines_wire_facts(tmp_path: Path) -> None:
    """Every message, enum and service we declare exists in the engine's iac.proto with
    the same package, fields (name, number, type, label, type name) and methods."""
    engine = _engine_iac_descriptors(tmp_path)
    ours = descriptor_pb2.FileDescriptorProto()
    ipb.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == engine.package == "workflow.plugin.external.iac"

    def fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[object, ...]]:
        shape = {f.name: (f.number, f.type, f.label, f.type_name) for f in message.field}
        for nested in message.nested_type:  # map entries
            shape.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return shape

    theirs = {m.name: fields(m) for m in engine.message_type}
    for message in ours.message_type:
        assert message.name in theirs, message.name
        assert fields(message) == theirs[message.name], message.name
    their_enums = {e.name: [(v.name, v.number) for v in e.value] for e in engine.enum_type}
    for enum in ours.enum_type:
        assert [(v.name, v.number) for v in enum.value] == their_enums[enum.name], enum.name
    their_services = {
        s.name: {m.name: (m.input_type, m.output_type) for m in s.method} for s in engine.service
    }
    for service in ours.service:
        methods = {m.name: (m.input_type, m.output_type) for m in service.method}
        assert methods == their_services[service.name], service.name


PG_APP = (
    HEADER
    + """\
      url: ${{EVENTBUS_TEST_PG_DSN}}
  - name: orders
    type: infra.eventbus_stream
    config:
      provider: bus_iac
      name: {stream}
      subjects: ["{root}.>"]
  - name: worker
    type: infra.eventbus_consumer
    config:
      provider: bus_iac
      depends_on: [orders]
      name: worker
      stream_name: {stream}
      max_deliver: 5
"""
)


async def test_pgchannel_streams_and_consumers_through_wfctl(
    infra: Infra, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loop on PostgreSQL, the DSN set once on the iac.provider."""
    import psycopg

    stream = f"IAC{free_port()}"
    monkeypatch.setenv("EVENTBUS_TEST_PG_DSN", pg_dsn)
    infra.config.write_text(
        PG_APP.format(state=infra.config.parent / "state", stream=stream, root=stream.lower())
    )
    assert "Plan: 2 to create" in infra.wfctl("plan").stdout
    infra.wfctl("apply", "-y")
    query = "SELECT max_deliver FROM eventbus_consumers WHERE stream_name = %s AND name = 'worker'"
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        assert await (await conn.execute(query, (stream,))).fetchall() == [(5,)]
        assert "No changes." in infra.wfctl("plan").stdout
        update = "UPDATE eventbus_consumers SET max_deliver = 9 WHERE stream_name = %s"
        await conn.execute(update, (stream,))  # by hand
        done = infra.wfctl("plan")
        assert "~ update  worker  (infra.eventbus_consumer)" in done.stdout, _explain(done)
        infra.wfctl("apply", "-y")
        assert await (await conn.execute(query, (stream,))).fetchall() == [(5,)]
        done = infra.wfctl("destroy", "-y")
        assert "✓ destroyed orders" in done.stdout, _explain(done)
        rows = "SELECT count(*) FROM eventbus_streams WHERE name = %s"
        assert await (await conn.execute(rows, (stream,))).fetchall() == [(0,)]
