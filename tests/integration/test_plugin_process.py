"""The plugin as the engine runs it: a real process, real gRPC, a real nats-server.

One plugin process serves the module (fixture ``host``); tests that end a
process (Shutdown, SIGTERM, parent death) start their own, which takes ~0.3 s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import stat
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool, empty_pb2
from plugin_process_helpers import (
    Recorder,
    bus,
    consumer_info,
    host,
    make_consumer,
    recorder,
    wait_for,
)

from workflow_eventbus import __version__
from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.devservers.host import PluginError, PluginHost, TriggerCall, plugin_command
from workflow_eventbus.plugin import contracts

pytestmark = pytest.mark.asyncio(loop_scope="session")
__all__ = ["bus", "host", "recorder"]  # fixtures, used by name


# --- transport ----------------------------------------------------------------------


async def test_handshake_line_and_private_socket(host: PluginHost) -> None:
    assert re.fullmatch(r"1\|1\|unix\|/\S+\|grpc", host.handshake), host.handshake
    sock = Path(host.socket_path)
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert mode & 0o077 == 0, oct(mode)
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert len(str(sock)) <= 100


async def test_without_cookie_explains_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if k != "WORKFLOW_PLUGIN"}
    proc = await asyncio.create_subprocess_exec(
        *plugin_command(), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert out == b""
    assert b"workflow-plugin-eventbus" in err and b"WORKFLOW_PLUGIN" in err


# --- static answers ---------------------------------------------------------------


async def test_manifest_and_type_lists(host: PluginHost) -> None:
    manifest = await host.manifest()
    assert manifest.name == "workflow-plugin-eventbus"
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest.version)
    assert __version__.startswith(manifest.version)
    assert manifest.author and manifest.description
    assert await host.types() == {
        "module": [
            "eventbus.broker",
            "eventbus.stream",
            "eventbus.consumer",
            "infra.eventbus",
            "infra.eventbus.stream",
            "infra.eventbus.consumer",
            "trigger.eventbus.subscribe",
        ],
        "step": ["step.eventbus.publish", "step.eventbus.consume", "step.eventbus.ack"],
        "trigger": ["trigger.eventbus.subscribe"],
    }
    schemas = await host.call("GetModuleSchemas", empty_pb2.Empty())
    by_type = {s.type: s for s in schemas.schemas}
    assert set(by_type) == set(contracts.RUNTIME_MODULE_TYPES)
    broker_fields = {f.name: f for f in by_type["eventbus.broker"].config_fields}
    assert broker_fields["provider"].required and "nats" in broker_fields["provider"].options
    assert by_type["eventbus.stream"].label


async def test_every_contract_message_resolves_from_the_descriptor_set_alone(
    host: PluginHost,
) -> None:
    registry = await host.registry()
    names = [f.name for f in registry.file_descriptor_set.file]
    assert len(names) == len(set(names)), names
    pool = descriptor_pool.DescriptorPool()  # empty: no well-known types preloaded
    for file in registry.file_descriptor_set.file:
        pool.Add(file)  # fails if a dependency is missing or came later
    referenced = set()
    for d in registry.contracts:
        assert d.mode == ppb.CONTRACT_MODE_STRICT_PROTO
        for name in (d.config_message, d.input_message, d.output_message):
            if name:
                referenced.add(name)
                assert pool.FindMessageTypeByName(name).full_name == name
    assert "workflow.plugin.eventbus.v1.PublishStepConfig" in referenced
    v1 = "workflow.plugin.eventbus.v1."
    messages = ("AckRequest", "AckResponse", "ConsumeRequest", "ConsumeResponse")
    messages += ("ConsumerConfig", "Message", "PublishRequest", "PublishResponse")
    assert referenced == {"google.protobuf.Struct", f"{v1}PublishStepConfig"} | {
        v1 + name for name in messages
    }


async def test_configs_with_enums_or_durations_are_contracted_as_struct(host: PluginHost) -> None:
    # The engine builds a contract's config message with protobuf JSON, which takes
    # neither `explicit` nor "1m30s"; for such configs the contract says Struct and
    # the plugin decodes the mapping itself.
    registry = await host.registry()
    configs = {
        (d.kind, d.module_type or d.step_type or d.trigger_type): d.config_message
        for d in registry.contracts
    }
    struct = "google.protobuf.Struct"
    for module_type in contracts.RUNTIME_MODULE_TYPES:
        assert configs[(ppb.CONTRACT_KIND_MODULE, module_type)] == struct, module_type
    assert configs[(ppb.CONTRACT_KIND_STEP, "step.eventbus.consume")] == struct
    assert configs[(ppb.CONTRACT_KIND_STEP, "step.eventbus.ack")] == struct
    # No enum or duration in it: the engine checks it before the RPC.
    publish = configs[(ppb.CONTRACT_KIND_STEP, "step.eventbus.publish")]
    assert publish == "workflow.plugin.eventbus.v1.PublishStepConfig"
    # Documentation only (the engine sends trigger configs as a Struct anyway).
    trigger = configs[(ppb.CONTRACT_KIND_TRIGGER, "trigger.eventbus.subscribe")]
    assert trigger == "workflow.plugin.eventbus.v1.ConsumerConfig"


async def test_runtime_registry_matches_the_committed_files(host: PluginHost) -> None:
    root = Path(__file__).resolve().parents[2]
    files = json.loads((root / "plugin.contracts.json").read_text())["contracts"]
    registry = await host.registry()
    kinds = {ppb.CONTRACT_KIND_MODULE: "module", ppb.CONTRACT_KIND_STEP: "step"}
    kinds[ppb.CONTRACT_KIND_TRIGGER] = "trigger"
    runtime = [
        (kinds[d.kind], d.module_type or d.step_type or d.trigger_type, d.config_message)
        for d in registry.contracts
        if d.kind != ppb.CONTRACT_KIND_SERVICE
    ]
    assert runtime == [(c["kind"], c["type"], c.get("config", "")) for c in files]
    # The IaC gRPC services are listed in the registry and in plugin.json's iacServices.
    manifest = json.loads((root / "plugin.json").read_text())
    services = [d.service_name for d in registry.contracts if d.kind == ppb.CONTRACT_KIND_SERVICE]
    assert services == manifest["iacServices"] and len(services) == 4
    assert manifest["version"] == (await host.manifest()).version


# --- modules and steps ------------------------------------------------------------


async def test_ten_published_consumed_and_acked_through_execute_step(
    host: PluginHost, bus: dict[str, str], nats_url: str
) -> None:
    await make_consumer(host, "steps-c", "it.steps")
    publish = await host.create_step(
        "step.eventbus.publish", "pub", typed=pb.PublishStepConfig(subject="it.steps")
    )
    consume = await host.create_step(
        "step.eventbus.consume", "take", typed=pb.ConsumeStepConfig(consumer="steps-c")
    )
    ack = await host.create_step("step.eventbus.ack", "ack")
    for i in range(10):
        out = await host.run_step(
            publish, pb.PublishRequest(payload=json.dumps({"n": i}).encode()), pb.PublishResponse
        )
        assert out.stream == "PLUGIN_IT" and int(out.sequence) > 0
    got = await host.run_step(
        consume, pb.ConsumeRequest(batch_size=10, max_wait={"seconds": 5}), pb.ConsumeResponse
    )
    assert [json.loads(m.payload)["n"] for m in got.messages] == list(range(10))
    assert all(m.subject == "it.steps" and m.delivery_count == 1 for m in got.messages)
    acked = await host.run_step(
        ack, pb.AckRequest(ack_tokens=[m.ack_token for m in got.messages]), pb.AckResponse
    )
    assert acked.count == 10
    info = await consumer_info(nats_url, "steps-c")
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.ack_floor.stream_seq == int(got.messages[-1].sequence)
    assert info.delivered.consumer_seq == 10


async def test_step_config_wins_and_typed_config_overrides_per_call(
    host: PluginHost, bus: dict[str, str], nats_url: str
) -> None:
    await make_consumer(host, "override-c", "it.override.>")
    publish = await host.create_step(
        "step.eventbus.publish", "pub2", {"subject": "it.override.config"}
    )
    # The typed input's subject (e.g. the incoming message in a trigger pipeline)
    # does not replace the configured one.
    await host.run_step(
        publish, pb.PublishRequest(subject="it.elsewhere", payload=b"a"), pb.PublishResponse
    )
    answer = await host.execute_step(
        publish,
        pb.PublishRequest(payload=b"b"),
        typed_config=pb.PublishStepConfig(subject="it.override.call"),
    )
    assert answer.error == ""
    consume = await host.create_step("step.eventbus.consume", "take2", {"consumer": "override-c"})
    got = await host.run_step(
        consume, pb.ConsumeRequest(batch_size=5, max_wait={"seconds": 5}), pb.ConsumeResponse
    )
    assert [(m.subject, m.payload) for m in got.messages] == [
        ("it.override.config", b"a"),
        ("it.override.call", b"b"),
    ]


async def test_concurrent_execute_step_on_one_handle(host: PluginHost, bus: dict[str, str]) -> None:
    publish = await host.create_step("step.eventbus.publish", "par", {"subject": "it.parallel"})
    outs = await asyncio.gather(
        *(
            host.run_step(publish, pb.PublishRequest(payload=str(i).encode()), pb.PublishResponse)
            for i in range(30)
        )
    )
    assert len({o.sequence for o in outs}) == 30


async def test_module_lifecycle_and_destroy(host: PluginHost, bus: dict[str, str]) -> None:
    handle = await host.create_module(
        "infra.eventbus.stream", "alias-stream", {"name": "PLUGIN_ALIAS", "subjects": ["alias.>"]}
    )
    assert uuid.UUID(handle).version == 4
    await host.init_module(handle)
    await host.start_module(handle)
    await host.stop_module(handle)
    await host.destroy_module(handle)
    with pytest.raises(PluginError, match=f"unknown module handle: {handle}"):
        await host.start_module(handle)


async def test_subscribe_trigger_as_a_module_type_is_accepted(host: PluginHost) -> None:
    handle = await host.create_module(
        "trigger.eventbus.subscribe", "as-module", typed=pb.ConsumerConfig(name="x")
    )
    await host.init_module(handle)
    await host.start_module(handle)
    await host.stop_module(handle)
    with pytest.raises(PluginError, match="name"):
        await host.create_module("trigger.eventbus.subscribe", "unnamed", {})


# --- bad input ----------------------------------------------------------------------


async def test_bad_requests_get_error_strings_not_crashes(
    host: PluginHost, bus: dict[str, str]
) -> None:
    request = ppb.CreateModuleRequest(type="eventbus.broker", name="wrong")
    request.typed_config.Pack(pb.StreamConfig(name="X"))
    answer = await host.call("CreateModule", request)
    assert "expected workflow.plugin.eventbus.v1.ClusterConfig" in answer.error
    assert "got workflow.plugin.eventbus.v1.StreamConfig" in answer.error
    assert not answer.handle_id

    publish = await host.create_step("step.eventbus.publish", "bare")
    answer = await host.execute_step(publish)  # no typed_input, no subject in the config
    assert "typed_input" in answer.error and "PublishRequest" in answer.error
    assert answer.typed_output.type_url.endswith("PublishResponse")

    answer = await host.execute_step(publish, pb.AckRequest(ack_token="t"))
    assert "expected workflow.plugin.eventbus.v1.PublishRequest" in answer.error

    for method, text in (("ExecuteStep", "unknown step handle: nope"),):
        assert (await host.call(method, ppb.ExecuteStepRequest(handle_id="nope"))).error == text
    assert (await host.call("DestroyStep", ppb.HandleRequest(handle_id="nope"))).error
    for method in ("InitModule", "StartModule", "StopModule", "DestroyModule"):
        answer = await host.call(method, ppb.HandleRequest(handle_id="nope"))
        assert answer.error == "unknown module handle: nope"

    answer = await host.call("CreateModule", ppb.CreateModuleRequest(type="nope", name="n"))
    assert 'unknown module type "nope"' in answer.error
    answer = await host.call("CreateStep", ppb.CreateStepRequest(type="step.nope", name="n"))
    assert 'unknown step type "step.nope"' in answer.error
    answer = await host.call("CreateTrigger", ppb.CreateTriggerRequest(type="nope"))
    assert 'unknown trigger type "nope"' in answer.error
    answer = await host.call("GetAsset", ppb.GetAssetRequest(path="x"))
    assert answer.error
    assert (await host.call("GetConfigFragment", empty_pb2.Empty())).yaml_config == b""
    answer = await host.call("ConfigureCallback", ppb.ConfigureCallbackRequest(broker_id=0))
    assert answer.error == "callback broker id is required"
    assert (await host.manifest()).name  # still serving


async def test_trigger_config_type_errors_name_the_key(host: PluginHost) -> None:
    with pytest.raises(PluginError, match=r"config\[consumer\].*must be a string, got number"):
        await host.create_trigger("trigger.eventbus.subscribe", "pipeline:bad", {"consumer": 5})


# --- trigger ------------------------------------------------------------------------


async def test_trigger_calls_trigger_workflow_once_per_message(
    host: PluginHost, bus: dict[str, str], recorder: Recorder, nats_url: str
) -> None:
    await make_consumer(host, "orders-c", "it.orders")
    workflow = "pipeline:orders"
    trigger = await host.create_trigger(
        "trigger.eventbus.subscribe",
        workflow,
        {"consumer": "orders-c", "bus": "bus", "workflowType": workflow},
    )
    await host.start_module(trigger)
    publish = await host.create_step("step.eventbus.publish", "orders", {"subject": "it.orders"})
    sent = []
    for i in range(5):
        request = pb.PublishRequest(
            payload=json.dumps({"order": i}).encode(), headers={"tenant": "t1"}
        )
        sent.append(await host.run_step(publish, request, pb.PublishResponse))
    await wait_for(lambda: len(recorder.for_workflow(workflow)) >= 5, what="5 trigger calls")
    calls = recorder.for_workflow(workflow)
    assert [c.action for c in calls] == ["message"] * 5
    data = calls[0].data
    assert data["subject"] == "it.orders"
    assert base64.b64decode(data["payload"]) == b'{"order": 0}'
    assert data["body"] == {"order": 0}
    assert data["headers"]["tenant"] == "t1"
    assert data["sequence"] == sent[0].sequence
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["published_at"])
    assert data["ack_token"] and data["delivery_count"] == 1
    assert (data["stream"], data["consumer"]) == ("PLUGIN_IT", "orders-c")
    assert [c.data["body"]["order"] for c in calls] == list(range(5))  # max_in_flight 1: in order

    async def settled() -> bool:
        info = await consumer_info(nats_url, "orders-c")
        return bool(info.num_ack_pending == 0 and info.delivered.consumer_seq == 5)

    await poll_async(settled, what="all acked")
    await host.stop_module(trigger)
    assert len(recorder.for_workflow(workflow)) == 5


async def test_trigger_data_sends_only_the_chosen_keys(
    host: PluginHost, bus: dict[str, str], recorder: Recorder
) -> None:
    await make_consumer(host, "keys-c", "it.keys")
    workflow = "pipeline:keys"
    trigger = await host.create_trigger(
        "trigger.eventbus.subscribe",
        workflow,
        {"consumer": "keys-c", "trigger_data": ["subject", "body", "ack_token"]},
    )
    await host.start_module(trigger)
    publish = await host.create_step("step.eventbus.publish", "keys", {"subject": "it.keys"})
    await host.run_step(publish, pb.PublishRequest(payload=b'{"n": 1}'), pb.PublishResponse)
    await wait_for(lambda: len(recorder.for_workflow(workflow)) >= 1, what="the trigger call")
    (call,) = recorder.for_workflow(workflow)
    assert set(call.data) == {"subject", "body", "ack_token"}
    assert call.data["body"] == {"n": 1} and call.data["subject"] == "it.keys"
    await host.stop_module(trigger)


async def poll_async(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_failed_callback_naks_and_the_message_is_redelivered(
    host: PluginHost, bus: dict[str, str], recorder: Recorder, nats_url: str
) -> None:
    await make_consumer(host, "flaky-c", "it.flaky")
    workflow = "pipeline:flaky"
    recorder.fail = lambda call: (
        "workflow execution failed: boom"
        if call.trigger_type == workflow and call.data["delivery_count"] == 1
        else ""
    )
    trigger = await host.create_trigger(
        "trigger.eventbus.subscribe", workflow, {"consumer": "flaky-c", "backoff": ["0.1s"]}
    )
    await host.start_module(trigger)
    publish = await host.create_step("step.eventbus.publish", "flaky", {"subject": "it.flaky"})
    for i in range(3):
        await host.run_step(publish, pb.PublishRequest(payload=str(i).encode()), pb.PublishResponse)
    await wait_for(lambda: len(recorder.for_workflow(workflow)) >= 6, what="3 failures + 3 retries")
    calls = recorder.for_workflow(workflow)
    assert sorted(c.data["delivery_count"] for c in calls) == [1, 1, 1, 2, 2, 2]
    assert sorted(c.data["body"] for c in calls if c.data["delivery_count"] == 2) == [0, 1, 2]

    async def settled() -> bool:
        info = await consumer_info(nats_url, "flaky-c")
        return bool(info.num_ack_pending == 0 and info.num_redelivered == 0)

    await poll_async(settled, what="redelivered messages acked")
    await host.stop_module(trigger)
    recorder.fail = lambda call: ""


async def test_execute_step_is_served_while_trigger_workflow_is_in_flight(
    host: PluginHost, bus: dict[str, str], recorder: Recorder
) -> None:
    """The engine runs the pipeline inside TriggerWorkflow and calls ExecuteStep back."""
    await make_consumer(host, "reentry-c", "it.reentry.in")
    await make_consumer(host, "reentry-out", "it.reentry.out")
    workflow = "pipeline:reentry"
    forward = await host.create_step(
        "step.eventbus.publish", "forward", {"subject": "it.reentry.out"}
    )
    outputs: list[str] = []

    async def pipeline(call: TriggerCall) -> None:
        if call.trigger_type == workflow:
            payload = base64.b64decode(call.data["payload"])
            out = await host.run_step(
                forward, pb.PublishRequest(payload=payload), pb.PublishResponse
            )
            outputs.append(out.sequence)

    recorder.hook = pipeline
    trigger = await host.create_trigger(
        "trigger.eventbus.subscribe", workflow, {"consumer": "reentry-c"}
    )
    await host.start_module(trigger)
    publish = await host.create_step("step.eventbus.publish", "in", {"subject": "it.reentry.in"})
    await host.run_step(publish, pb.PublishRequest(payload=b"ping"), pb.PublishResponse)
    await wait_for(lambda: len(outputs) == 1, what="the forwarded publish")
    take = await host.create_step("step.eventbus.consume", "take", {"consumer": "reentry-out"})
    got = await host.run_step(
        take, pb.ConsumeRequest(batch_size=1, max_wait={"seconds": 5}), pb.ConsumeResponse
    )
    assert [m.payload for m in got.messages] == [b"ping"]
    await host.stop_module(trigger)
    recorder.hook = None


# --- process lifetime ---------------------------------------------------------------


async def test_configure_callback_before_conninfo_waits_for_it() -> None:
    async with PluginHost(announce_callback=False, load=False) as late:
        pending = asyncio.create_task(late.configure_callback())
        await asyncio.sleep(0.3)  # ordering, not readiness: the ConnInfo must come later
        assert not pending.done()
        late.send_conninfo()
        await asyncio.wait_for(pending, 5)


async def test_shutdown_exits_within_two_seconds(nats_url: str) -> None:
    plugin = PluginHost()
    await plugin.start()
    broker = await plugin.create_module(
        "eventbus.broker",
        "b",
        {"provider": "nats", "deploy_target": "self_hosted", "dsn": nats_url},
    )
    await plugin.init_module(broker)
    await plugin.start_module(broker)
    socket_dir = Path(plugin.socket_path).parent
    took = await plugin.shutdown()
    assert took < 2.0
    assert plugin.process is not None and plugin.process.returncode == 0
    assert not socket_dir.exists()


async def test_sigterm_is_graceful_and_sigint_ignored() -> None:
    plugin = PluginHost()
    await plugin.start()
    try:
        os.kill(plugin.pid, signal.SIGINT)
        assert (await plugin.manifest()).name  # still serving after SIGINT
        os.kill(plugin.pid, signal.SIGTERM)
        assert plugin.process is not None
        assert await asyncio.wait_for(plugin.process.wait(), 5) == 0
        assert not Path(plugin.socket_path).parent.exists()
    finally:
        await plugin.kill()


PARENT = """
import subprocess, sys
from workflow_eventbus.devservers.host import engine_environment, plugin_command
child = subprocess.Popen(plugin_command(), env=engine_environment(), stdout=subprocess.PIPE)
print(child.pid, child.stdout.readline().decode().strip(), flush=True)
sys.stdin.read()
"""


async def test_plugin_exits_when_its_host_dies() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    pid_text, handshake = (await asyncio.wait_for(parent.stdout.readline(), 30)).decode().split()
    child = int(pid_text)
    socket_dir = Path(handshake.split("|")[3]).parent
    assert socket_dir.exists()
    parent.kill()
    await parent.wait()
    await wait_for(lambda: not socket_dir.exists() and not _alive(child), what="plugin exit")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
