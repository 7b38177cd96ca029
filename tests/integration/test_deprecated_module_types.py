"""A module created with an old ``infra.eventbus*`` type runs and says so in the engine's log.

The plugin runs as the engine runs it (host harness). Each old type name gets one
``module.deprecated_type`` warning naming today's type; today's names get none.
"""

from __future__ import annotations

import pytest
from plugin_process_helpers import wait_for

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.host import LogEntry, PluginHost

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


def deprecations(host: PluginHost) -> list[LogEntry]:
    return [
        e for e in host.callback_server.logs if e.fields.get("event") == "module.deprecated_type"
    ]


async def test_each_old_type_name_is_warned_about_once_and_still_created() -> None:
    async with PluginHost() as host:
        broker = {"provider": "nats", "deploy_target": "self_hosted", "dsn": "nats://127.0.0.1:1"}
        await host.create_module("eventbus.broker", "today", broker)
        await host.create_module("infra.eventbus", "bus", broker)
        await host.create_module(
            "infra.eventbus.stream",
            "orders",
            typed=pb.StreamConfig(name="ORDERS", subjects=["orders.>"], broker_ref="bus"),
        )
        await host.create_module(
            "infra.eventbus.consumer",
            "worker",
            {"name": "worker", "stream_name": "ORDERS", "broker_ref": "bus"},
        )
        await wait_for(lambda: len(deprecations(host)) >= 3, what="three deprecation entries")
        seen = [
            (e.level, e.fields["module_name"], e.fields["type"], e.fields["canonical"])
            for e in deprecations(host)
        ]
        assert seen == [
            ("warn", "bus", "infra.eventbus", "eventbus.broker"),
            ("warn", "orders", "infra.eventbus.stream", "eventbus.stream"),
            ("warn", "worker", "infra.eventbus.consumer", "eventbus.consumer"),
        ]
        first = deprecations(host)[0]
        assert "wfctl infra plan" in first.message and "upgrade-config" in first.message
        assert first.fields["logger"] == "workflow_eventbus.plugin"
