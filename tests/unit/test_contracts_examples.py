"""The example configs decode strictly into the contract messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from workflow_eventbus.core import capabilities
from workflow_eventbus.core.config import decode
from workflow_eventbus.core.names import SUBSCRIBE, canonical_module_type
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.engine.trigger import parse_trigger_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return data


@pytest.mark.parametrize("name", ["eventbus-app.yaml", "local.yaml"])
def test_module_configs_decode_and_register(name: str) -> None:
    bus = EventBus(environ={})
    for module in load(name)["modules"]:
        cls = capabilities.MODULES[canonical_module_type(module["type"])].config
        decode(cls, module["config"], setting=module["name"])
        bus.create_module(module["type"], module["name"], module["config"])


async def test_app_steps_and_trigger_decode() -> None:
    app = load("eventbus-app.yaml")
    bus = EventBus(environ={})
    for module in app["modules"]:  # Init registers them, as the engine does before triggers
        await bus.create_module(module["type"], module["name"], module["config"]).init()
    seen = 0
    for pipeline in app["pipelines"].values():
        trigger = pipeline.get("trigger")
        if trigger and trigger["type"] == SUBSCRIBE:
            cfg = parse_trigger_config(bus, {**trigger["config"], "workflowType": "pipeline:x"})
            assert cfg.stream_name == "ORDERS" and cfg.name == "shipper"
            seen += 1
        for step in pipeline["steps"]:
            contract = capabilities.STEPS.get(step["type"])
            if contract is not None:
                decode(contract.config, step.get("config", {}), setting=step["name"])
                seen += 1
    assert seen == 3
