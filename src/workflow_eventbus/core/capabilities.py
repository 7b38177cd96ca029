"""Every capability the plugin provides, with its protobuf messages: the one table.

A module type has a config message; a step type a config, an input and an
output message; the trigger a config and the message it hands each pipeline.
The runtime (:mod:`..engine.bus`, :mod:`..engine.steps`), the plugin's contract
registry and GetModuleSchemas all read these tables, so a message can change in
one place only. The old ``infra.eventbus*`` module names are listed as aliases
with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from .._proto import eventbus_pb2 as pb
from .names import (
    ACK_STEP,
    BROKER,
    CONSUME_STEP,
    CONSUMER,
    MODULE_ALIASES,
    PUBLISH_STEP,
    STREAM,
    SUBSCRIBE,
)


@dataclass(frozen=True, slots=True)
class ModuleCapability:
    type_name: str
    config: type[Message]
    alias_of: str = ""  # set on the old infra.eventbus* names


@dataclass(frozen=True, slots=True)
class StepCapability:
    type_name: str
    config: type[Message]
    input: type[Message]
    output: type[Message]


@dataclass(frozen=True, slots=True)
class TriggerCapability:
    type_name: str
    config: type[Message]
    output: type[Message]  # the message each pipeline run receives


_CANONICAL_MODULES = {
    BROKER: pb.ClusterConfig,
    STREAM: pb.StreamConfig,
    CONSUMER: pb.ConsumerConfig,
    # The trigger type is also a module type in the Go plugin (validated, inert).
    SUBSCRIBE: pb.ConsumerConfig,
}

MODULES: Mapping[str, ModuleCapability] = {
    **{name: ModuleCapability(name, config) for name, config in _CANONICAL_MODULES.items()},
    **{
        alias: ModuleCapability(alias, _CANONICAL_MODULES[target], alias_of=target)
        for alias, target in MODULE_ALIASES.items()
    },
}

STEPS: Mapping[str, StepCapability] = {
    c.type_name: c
    for c in (
        StepCapability(PUBLISH_STEP, pb.PublishStepConfig, pb.PublishRequest, pb.PublishResponse),
        StepCapability(CONSUME_STEP, pb.ConsumeStepConfig, pb.ConsumeRequest, pb.ConsumeResponse),
        StepCapability(ACK_STEP, pb.AckStepConfig, pb.AckRequest, pb.AckResponse),
    )
}

TRIGGERS: Mapping[str, TriggerCapability] = {
    SUBSCRIBE: TriggerCapability(SUBSCRIBE, pb.ConsumerConfig, pb.Message),
}


def step(type_name: str) -> StepCapability:
    """The step capability ``type_name`` (KeyError when unknown: callers check first)."""
    return STEPS[type_name]
