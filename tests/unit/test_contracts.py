"""Static contracts: the committed plugin files, the descriptor set, manifest rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

from google.protobuf import descriptor_pool

from workflow_eventbus import __version__
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.cli.install import dump_json
from workflow_eventbus.core import capabilities
from workflow_eventbus.core.names import MODULE_ALIASES, MODULE_TYPES, STEP_TYPES, TRIGGER_TYPES
from workflow_eventbus.plugin import contracts

ROOT = Path(__file__).resolve().parents[2]
NAME_RULE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")  # the engine's manifest name rule


def test_committed_files_equal_the_generated_ones() -> None:
    assert (ROOT / "plugin.json").read_text() == dump_json(contracts.plugin_json())
    assert (ROOT / "plugin.contracts.json").read_text() == dump_json(contracts.contracts_json())


def test_plugin_json_passes_the_engine_manifest_rules() -> None:
    data = contracts.plugin_json()
    assert NAME_RULE.match(data["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["version"])
    assert __version__.startswith(data["version"])
    assert data["author"] and data["description"] and data["minEngineVersion"]
    caps = data["capabilities"]
    assert caps["moduleTypes"] == [*MODULE_TYPES, *MODULE_ALIASES]  # old names stay loadable
    assert caps["stepTypes"] == list(STEP_TYPES)
    assert caps["triggerTypes"] == list(TRIGGER_TYPES)


def test_plugin_version_strips_pre_release_and_build_parts() -> None:
    assert contracts.plugin_version("1.2.3rc1") == "1.2.3"
    assert contracts.plugin_version("1.2.3+local") == "1.2.3"
    assert contracts.plugin_version("v1") == "0.0.0"


def test_every_advertised_type_has_a_strict_contract() -> None:
    entries = json.loads(dump_json(contracts.contracts_json()))["contracts"]
    have = {(e["kind"], e["type"]) for e in entries if e["mode"] == "strict_proto"}
    wanted = {("module", t) for t in (*MODULE_TYPES, *MODULE_ALIASES)}
    wanted |= {("step", t) for t in STEP_TYPES} | {("trigger", t) for t in TRIGGER_TYPES}
    assert wanted <= have
    steps = [e for e in entries if e["kind"] == "step"]
    assert all({"config", "input", "output"} <= set(e) for e in steps)


def test_descriptor_set_is_closed_and_ordered() -> None:
    fds = contracts.file_descriptor_set()
    names = [f.name for f in fds.file]
    assert names == [
        "google/protobuf/struct.proto",
        "google/protobuf/empty.proto",
        "google/protobuf/duration.proto",
        "eventbus.proto",
    ]
    seen: set[str] = set()
    for file in fds.file:
        assert set(file.dependency) <= seen, file.name
        seen.add(file.name)
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    for name in contracts.message_names():
        assert pool.FindMessageTypeByName(name).full_name == name


def test_registry_kinds_and_messages() -> None:
    registry = contracts.contract_registry()
    steps = {d.step_type: d for d in registry.contracts if d.kind == ppb.CONTRACT_KIND_STEP}
    publish = steps["step.eventbus.publish"]
    assert publish.config_message == "workflow.plugin.eventbus.v1.PublishStepConfig"
    assert publish.input_message == "workflow.plugin.eventbus.v1.PublishRequest"
    assert publish.output_message == "workflow.plugin.eventbus.v1.PublishResponse"
    (trigger,) = [d for d in registry.contracts if d.kind == ppb.CONTRACT_KIND_TRIGGER]
    assert trigger.config_message.endswith("ConsumerConfig")
    assert trigger.output_message.endswith(".Message")


def test_module_schemas_cover_every_config_field() -> None:
    for schema in contracts.module_schemas().schemas:
        cls = capabilities.MODULES[schema.type].config
        assert [f.name for f in schema.config_fields] == [f.name for f in cls.DESCRIPTOR.fields]
        assert schema.label and schema.description
        for field in schema.config_fields:
            assert field.type in {
                "string",
                "number",
                "boolean",
                "select",
                "array",
                "map",
                "duration",
                "object",
            }
            assert field.description
