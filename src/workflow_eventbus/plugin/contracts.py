"""What the plugin advertises: manifest, type lists, module schemas, contracts.

Everything here is static and derived from one place, so the gRPC answers
(GetManifest, Get*Types, GetModuleSchemas, GetContractRegistry) and the files
an engine reads from disk (``plugin.json``, ``plugin.contracts.json``) can never
disagree. ``tests/unit/test_contracts.py`` checks the committed files against
these functions.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, empty_pb2, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from .. import _proto
from .._proto import eventbus_pb2 as pb
from .._proto import plugin_pb2 as ppb
from .._version import __version__
from ..core import capabilities
from ..core.config import enum_short_name, format_duration
from ..core.defaults import (
    DEFAULT_ACK_WAIT,
    DEFAULT_BACKOFF,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
)
from ..core.names import (
    BROKER,
    CONSUMER,
    MODULE_ALIASES,
    MODULE_TYPES,
    PLUGIN_NAME,
    STEP_TYPES,
    STREAM,
    SUBSCRIBE,
    TRIGGER_TYPES,
)
from ..providers import offered
from .iac import wire as iac

AUTHOR = "GoCodeAlone"
DESCRIPTION = (
    "Durable event bus for workflow pipelines: NATS JetStream or PostgreSQL brokers, "
    "streams and consumers as modules, publish/consume/ack steps and a subscribe trigger."
)
LICENSE = "MIT"
# Oldest engine known to strip `_`-prefixed keys from typed step configs on
# ExecuteStep (reference plugin-protocol.md §3.4); steps with a config message
# need that.
MIN_ENGINE_VERSION = "0.57.2"

# GetModuleTypes keeps the Go plugin's list (the trigger type is also a module
# type there) plus the pre-v0.2.0 names, which the engine must know to accept
# configs written for the old Go plugin. plugin.json lists the modules and aliases.
ADVERTISED_MODULE_TYPES = (*MODULE_TYPES, *MODULE_ALIASES)
RUNTIME_MODULE_TYPES = (*ADVERTISED_MODULE_TYPES, SUBSCRIBE)

_SEMVER = re.compile(r"^\d+\.\d+\.\d+")


def plugin_version(raw: str = __version__) -> str:
    """Plain ``X.Y.Z`` (the engine rejects ``-rc1``/``+meta`` and dev versions)."""
    match = _SEMVER.match(raw)
    return match.group(0) if match else "0.0.0"


def manifest() -> ppb.Manifest:
    return ppb.Manifest(
        name=PLUGIN_NAME, version=plugin_version(), author=AUTHOR, description=DESCRIPTION
    )


# --- contracts ------------------------------------------------------------------


def _full(msg: type[Any]) -> str:
    return str(msg.DESCRIPTOR.full_name)


STRICT = ppb.CONTRACT_MODE_STRICT_PROTO


STRUCT_CONFIG = str(struct_pb2.Struct.DESCRIPTOR.full_name)


def engine_config_message(cls: type[Any]) -> str:
    """The config message the engine is told to build from a module/step YAML config.

    The engine turns the YAML into the contract's config message with protobuf
    JSON, which takes only full enum names (``ACK_POLICY_EXPLICIT``) and
    ``"<seconds>s"`` durations. For a config with an enum or a duration anywhere
    in it the contract names ``google.protobuf.Struct`` instead: the engine packs
    the YAML mapping as it is (minus its ``_`` keys) and the plugin decodes it
    into ``cls`` with the strict decoder (unknown keys and bad values are errors
    that name them), which takes every documented form. A config without such
    fields keeps its own message, so the engine checks it before the RPC."""
    return STRUCT_CONFIG if _has_enum_or_duration(cls.DESCRIPTOR) else _full(cls)


def _has_enum_or_duration(desc: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    for field in desc.fields:
        if field.enum_type is not None:
            return True
        message = field.message_type
        if message is None or message.full_name in seen:
            continue
        if message.full_name == "google.protobuf.Duration":
            return True
        if _has_enum_or_duration(message, seen | {desc.full_name}):
            return True
    return False


def contract_descriptors() -> list[ppb.ContractDescriptor]:
    """Every advertised type with its messages, all STRICT_PROTO (module and step
    configs as ``engine_config_message`` says)."""
    out = [
        ppb.ContractDescriptor(
            kind=ppb.CONTRACT_KIND_MODULE,
            module_type=t,
            config_message=engine_config_message(cls),
            mode=STRICT,
        )
        for t, cls in ((t, c.config) for t, c in capabilities.MODULES.items())
    ]
    trigger = capabilities.TRIGGERS[SUBSCRIBE]
    out += [
        ppb.ContractDescriptor(
            kind=ppb.CONTRACT_KIND_STEP,
            step_type=c.type_name,
            config_message=engine_config_message(c.config),
            input_message=_full(c.input),
            output_message=_full(c.output),
            mode=STRICT,
        )
        for c in capabilities.STEPS.values()
    ]
    out.append(
        ppb.ContractDescriptor(
            kind=ppb.CONTRACT_KIND_TRIGGER,
            trigger_type=trigger.type_name,
            config_message=_full(trigger.config),
            output_message=_full(trigger.output),
            mode=STRICT,
        )
    )
    return out


def file_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """struct, empty, duration, eventbus: every transitive import, each file once,
    dependencies before the files that import them."""
    roots = (struct_pb2.DESCRIPTOR, empty_pb2.DESCRIPTOR, pb.DESCRIPTOR)
    fds = descriptor_pb2.FileDescriptorSet()
    for file in _dependency_order(roots):
        file.CopyToProto(fds.file.add())
    return fds


def _dependency_order(roots: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    seen: set[str] = set()
    ordered: list[FileDescriptor] = []

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dep in file.dependencies:
            visit(dep)
        ordered.append(file)

    for root in roots:
        visit(root)
    return ordered


def iac_service_descriptors() -> list[ppb.ContractDescriptor]:
    """The IaC provider's gRPC services (wfctl opens the optional ones it finds here)."""
    return [
        ppb.ContractDescriptor(kind=ppb.CONTRACT_KIND_SERVICE, service_name=name, mode=STRICT)
        for name in iac.service_names()
    ]


def contract_registry() -> ppb.ContractRegistry:
    return ppb.ContractRegistry(
        contracts=[*contract_descriptors(), *iac_service_descriptors()],
        file_descriptor_set=file_descriptor_set(),
    )


def message_names() -> list[str]:
    """Every message name the registry refers to (for resolution checks)."""
    names: list[str] = []
    for d in contract_descriptors():
        for name in (d.config_message, d.input_message, d.output_message):
            if name and name not in names:
                names.append(name)
    return names


# --- module schemas ---------------------------------------------------------------

_LABELS = {
    BROKER: ("Event bus broker", "A broker connection (NATS JetStream or PostgreSQL)."),
    STREAM: ("Event bus stream", "A durable stream of messages on the broker."),
    CONSUMER: ("Event bus consumer", "A durable pull consumer on a stream."),
    SUBSCRIBE: (
        "Event bus subscribe trigger (module form)",
        "Kept for Go parity; validated but inert. Use it as a pipeline trigger instead.",
    ),
}

# Defaults the runtime applies when a field is left unset (taken from the library).
_DEFAULTS: dict[str, dict[str, str]] = {
    BROKER: {"connect_timeout": format_duration(DEFAULT_CONNECT_TIMEOUT)},
    STREAM: {},
    CONSUMER: {
        "ack_wait": format_duration(DEFAULT_ACK_WAIT) + " (or the stream's ack_wait)",
        "max_in_flight": str(DEFAULT_MAX_IN_FLIGHT),
        "fetch_batch": "0 (as many as there are free handler slots)",
        "drain_timeout": format_duration(DEFAULT_DRAIN_TIMEOUT),
        "backoff": ", ".join(format_duration(s) for s in DEFAULT_BACKOFF),
    },
}
_DEFAULTS[SUBSCRIBE] = _DEFAULTS[CONSUMER]
_REQUIRED: dict[str, tuple[str, ...]] = {
    BROKER: ("provider",),
    STREAM: ("name", "subjects"),
    CONSUMER: ("name", "stream_name"),
    SUBSCRIBE: ("name",),
}


def _field_type(field: FieldDescriptor) -> tuple[str, list[str]]:
    message, enum = field.message_type, field.enum_type
    if message is not None:
        if message.GetOptions().map_entry:
            return "map", []
        kind = "duration" if message.full_name == "google.protobuf.Duration" else "object"
    elif enum is not None:
        options = [enum_short_name(enum, v.number) for v in enum.values if v.number != 0]
        return ("array" if _repeated(field) else "select"), options
    elif field.type == FieldDescriptor.TYPE_BOOL:
        kind = "boolean"
    elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        kind = "string"
    else:
        kind = "number"
    return ("array" if _repeated(field) else kind), []


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _config_fields(module_type: str, desc: Descriptor) -> list[ppb.ConfigFieldDef]:
    fields = []
    defaults = _DEFAULTS.get(module_type, {})
    required = _REQUIRED.get(module_type, ())
    for field in desc.fields:
        kind, options = _field_type(field)
        if field.name == "provider":
            kind, options = "select", offered()
        fields.append(
            ppb.ConfigFieldDef(
                name=field.name,
                type=kind,
                description=_describe(field),
                default_value=defaults.get(field.name, ""),
                required=field.name in required,
                options=options,
            )
        )
    return fields


@functools.cache
def _field_comments() -> dict[str, str]:
    """The proto's field comments (``"ClusterConfig.dsn": ...``), written by genproto."""
    text = resources.files(_proto).joinpath("eventbus_comments.json").read_text("utf-8")
    comments: dict[str, str] = json.loads(text)
    return comments


def _describe(field: FieldDescriptor) -> str:
    owner = field.containing_type
    comment = _field_comments().get(f"{owner.name}.{field.name}") if owner else None
    if comment:
        return comment
    words = field.name.replace("_", " ")
    message = field.message_type
    if message is not None and not message.GetOptions().map_entry:
        if message.full_name == "google.protobuf.Duration":
            return f'{words} (duration such as "30s")'
        return f"{words} ({message.name})"
    return words


def module_schemas() -> ppb.ModuleSchemaList:
    schemas = []
    for module_type, capability in capabilities.MODULES.items():
        canonical = capability.alias_of or module_type
        label, description = _LABELS[canonical]
        desc: Descriptor = capability.config.DESCRIPTOR  # type: ignore[assignment]
        schemas.append(
            ppb.ModuleSchema(
                type=module_type,
                label=label,
                category="messaging",
                description=description,
                config_fields=_config_fields(canonical, desc),
            )
        )
    return ppb.ModuleSchemaList(schemas=schemas)


# --- files on disk ----------------------------------------------------------------


def plugin_json() -> dict[str, Any]:
    """The engine's ``plugin.json`` (object-shaped capabilities, as the Go plugin)."""
    return {
        "name": PLUGIN_NAME,
        "version": plugin_version(),
        "description": DESCRIPTION,
        "author": AUTHOR,
        "license": LICENSE,
        "type": "external",
        "tier": "community",
        "private": False,
        "minEngineVersion": MIN_ENGINE_VERSION,
        "keywords": ["eventbus", "nats", "jetstream", "postgres", "pubsub", "python"],
        "capabilities": {
            "configProvider": False,
            "moduleTypes": list(ADVERTISED_MODULE_TYPES),
            "stepTypes": list(STEP_TYPES),
            "triggerTypes": list(TRIGGER_TYPES),
            # wfctl finds an IaC provider plugin by capabilities.iacProvider.name;
            # `wfctl validate` learns the resource types from here.
            "iacProvider": {
                "name": iac.PROVIDER_NAME,
                "resourceTypes": list(iac.RESOURCE_TYPES),
            },
        },
        "iacProvider": {
            "name": iac.PROVIDER_NAME,
            "resourceTypes": list(iac.RESOURCE_TYPES),
            "computePlanVersion": iac.COMPUTE_PLAN_VERSION,
        },
        "iacServices": iac.service_names(),
    }


_KIND_NAMES = {
    ppb.CONTRACT_KIND_MODULE: ("module", "module_type"),
    ppb.CONTRACT_KIND_STEP: ("step", "step_type"),
    ppb.CONTRACT_KIND_TRIGGER: ("trigger", "trigger_type"),
}


def contracts_json() -> dict[str, Any]:
    """``plugin.contracts.json``: the runtime registry in the audit tool's shape."""
    entries = []
    for d in contract_descriptors():
        kind, type_field = _KIND_NAMES[d.kind]
        entry: dict[str, Any] = {
            "kind": kind,
            "type": getattr(d, type_field),
            "mode": "strict_proto",
        }
        for key, value in (
            ("config", d.config_message),
            ("input", d.input_message),
            ("output", d.output_message),
        ):
            if value:
                entry[key] = value
        entries.append(entry)
    return {"version": "1", "contracts": entries}
