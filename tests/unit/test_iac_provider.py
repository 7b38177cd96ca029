"""The IaC provider's pure parts: provider ids, config splitting, drift -> plan changes,
config decoding of each resource type, and the plan/destroy answers that need no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_eventbus._proto import iac_pb2 as ipb
from workflow_eventbus._proto import plugin_pb2 as ppb
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.plugin import contracts
from workflow_eventbus.plugin.iac import drivers, wire
from workflow_eventbus.plugin.iac.drivers import ServerDriver, Settings, StreamDriver
from workflow_eventbus.plugin.iac.service import Provider
from workflow_eventbus.providers import REGISTRY
from workflow_eventbus.providers.base import Feature, SettingDrift


def _spec(resource: str, resource_type: str, **config: object) -> ipb.ResourceSpec:
    return ipb.ResourceSpec(name=resource, type=resource_type, config_json=wire.dump_json(config))


def test_public_url_drops_every_kind_of_credential_and_keeps_the_address() -> None:
    assert wire.public_url("nats://app:s3cret@10.0.0.5:4222") == "nats://10.0.0.5:4222"
    assert wire.public_url("nats://t0ken@broker.internal:4222") == "nats://broker.internal:4222"
    assert wire.public_url("tls://broker:4443/path?x=1") == "tls://broker:4443/path"
    assert wire.same_broker("nats://u:p@h:1", "nats://h:1")
    assert not wire.same_broker("nats://h:1", "nats://h:2")


def test_public_url_keeps_every_host_of_a_multi_host_url_and_no_credentials() -> None:
    assert wire.public_url("kafka://a:9092,b:9092") == "kafka://a:9092,b:9092"
    assert wire.public_url("nats://u:pw@A:4222,b:4223") == "nats://a:4222,b:4223"
    dsn = "postgresql://app:s3cret@db-1:5432,db-2:5433/orders?sslmode=require"
    assert wire.public_url(dsn) == "postgresql://db-1:5432,db-2:5433/orders"
    assert wire.public_url("nats://[::1]:4222,h") == "nats://[::1]:4222,h"
    assert wire.same_broker("kafka://u:p@a:1,b:2", "kafka://a:1,b:2")


def test_public_url_bad_port_is_a_config_error_without_the_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        wire.public_url("kafka://app:s3cret@a:9092,b:notaport")
    assert info.value.setting == "url"
    assert info.value.fix
    assert "s3cret" not in str(info.value)
    assert "b:notaport" in str(info.value)


@pytest.mark.parametrize(
    ("resource_type", "obj"),
    [
        (wire.STREAM_TYPE, wire.BrokerObject("nats://h:4222", "ORDERS")),
        (wire.CONSUMER_TYPE, wire.BrokerObject("nats://h:4222", "ORDERS", "worker")),
    ],
)
def test_provider_ids_round_trip(resource_type: str, obj: wire.BrokerObject) -> None:
    assert wire.parse_object_id(obj.provider_id(), resource_type) == obj


@pytest.mark.parametrize(
    ("provider_id", "resource_type"),
    [
        ("ORDERS", wire.STREAM_TYPE),  # no broker
        ("nats://h:1#ORDERS/worker", wire.STREAM_TYPE),  # a consumer id for a stream
        ("nats://h:1#ORDERS", wire.CONSUMER_TYPE),  # a stream id for a consumer
        ("nats://h:1#", wire.STREAM_TYPE),
    ],
)
def test_foreign_provider_ids_are_refused_with_the_expected_shape(
    provider_id: str, resource_type: str
) -> None:
    with pytest.raises(ConfigError, match="provider_id: is not an id this provider made"):
        wire.parse_object_id(provider_id, resource_type)


def test_split_config_removes_the_keys_wfctl_owns() -> None:
    ours, url = wire.split_config(
        {
            "provider": "bus_iac",
            "iac_provider": "x",
            "depends_on": ["srv"],
            "protected": True,
            "size": "s",
            "_config_dir": "/x",
            "url": "nats://h:1",
            "name": "ORDERS",
        }
    )
    assert (ours, url) == ({"name": "ORDERS"}, "nats://h:1")
    with pytest.raises(ConfigError, match="url: must be a string"):
        wire.split_config({"url": 4222})


def test_drifts_become_field_changes_and_an_immutable_one_means_replace() -> None:
    soft = SettingDrift("max_age", "2h", "1h", immutable=False)
    hard = SettingDrift("storage", "memory", "file", immutable=True)
    changes = wire.field_changes([soft])
    assert [(c.path, json.loads(c.old_json), json.loads(c.new_json)) for c in changes] == [
        ("max_age", "2h", "1h")
    ]
    update = wire.diff_result(changes)
    assert update.needs_update and not update.needs_replace
    replace = wire.diff_result(wire.field_changes([soft, hard]))
    assert replace.needs_replace and [c.force_new for c in replace.changes] == [False, True]
    assert not wire.diff_result([]).needs_update
    gone = wire.drift_diff(None, missing="exists")
    assert gone.needs_update and not gone.needs_replace
    assert [(c.path, json.loads(c.old_json), json.loads(c.new_json)) for c in gone.changes] == [
        ("exists", False, True)
    ]
    assert not wire.drift_diff([], missing="exists").needs_update


def test_drift_results_say_ghost_config_in_sync_or_unknown() -> None:
    ref = ipb.ResourceRef(name="orders", type=wire.STREAM_TYPE)

    def kind(result: ipb.DriftResult) -> tuple[int, bool]:
        return getattr(result, "class"), result.drifted

    assert kind(wire.drift_result(ref, None, compared=True)) == (ipb.DRIFT_CLASS_GHOST, True)
    assert kind(wire.drift_result(ref, [], compared=True)) == (ipb.DRIFT_CLASS_IN_SYNC, False)
    assert kind(wire.drift_result(ref, [], compared=False)) == (ipb.DRIFT_CLASS_UNKNOWN, False)
    drifted = wire.drift_result(
        ref, [SettingDrift("max_age", "2h", "1h", immutable=False)], compared=True
    )
    assert kind(drifted) == (ipb.DRIFT_CLASS_CONFIG, True)
    assert json.loads(drifted.expected_json) == {"max_age": "1h"}
    assert json.loads(drifted.actual_json) == {"max_age": "2h"}
    assert list(drifted.fields) == ["max_age"]


def test_destroy_order_is_consumers_then_streams_then_servers() -> None:
    refs = [
        ipb.ResourceRef(name=n, type=t)
        for n, t in (
            ("srv", wire.SERVER_TYPE),
            ("orders", wire.STREAM_TYPE),
            ("worker", wire.CONSUMER_TYPE),
        )
    ]
    assert [r.name for r in wire.destroy_order(refs)] == ["worker", "orders", "srv"]


def test_provider_settings_take_url_and_connect_timeout_only() -> None:
    settings = Settings.from_config({"provider": "eventbus", "url": "nats://h:1"})
    assert settings.url == "nats://h:1"
    assert Settings.from_config({"connect_timeout": "2s"}).connect_timeout == 2.0
    with pytest.raises(ConfigError, match="iac.provider eventbus: region: unknown key"):
        Settings.from_config({"region": "fra1"})
    with pytest.raises(ConfigError, match="connect_timeout: must be positive") as caught:
        Settings.from_config({"connect_timeout": "0s"})
    assert "connect_timeout: 10s" in caught.value.fix


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"data_dir": "nats"}, r"\.data_dir: must be an absolute path"),
        ({}, r"\.data_dir: must be an absolute path"),
        ({"data_dir": "/d", "port": 70000}, r"\.port: must be a port number"),
        ({"data_dir": "/d", "port": True}, r"\.port: must be a port number"),
        ({"data_dir": "/d", "url": "nats://h:1"}, r"\.url: unknown key"),
    ],
)
def test_server_config_errors_name_the_setting(config: dict[str, object], message: str) -> None:
    driver = ServerDriver(Settings())
    with pytest.raises(ConfigError, match=message) as caught:
        driver._decode(_spec("srv", wire.SERVER_TYPE, **config))
    assert caught.value.fix  # each says what to write instead


def test_a_stream_needs_a_url_here_or_on_the_provider() -> None:
    spec = _spec("orders", wire.STREAM_TYPE, name="ORDERS", subjects=["orders.>"])
    with pytest.raises(ConfigError, match='infra.eventbus_stream "orders": url: is required'):
        StreamDriver(Settings())._decode(spec)
    obj, url, cfg = StreamDriver(Settings(url="nats://u:p@h:1"))._decode(spec)
    assert (obj.provider_id(), url, cfg.name) == ("nats://h:1#ORDERS", "nats://u:p@h:1", "ORDERS")
    kafka = "kafka://u:p@a:9092,b:9092"  # the multi-host form docs/kafka.md recommends
    obj, url, _ = StreamDriver(Settings(url=kafka))._decode(spec)
    assert (obj.provider_id(), url) == ("kafka://a:9092,b:9092#ORDERS", kafka)


async def test_a_stream_moved_to_another_broker_or_name_is_a_replace() -> None:
    driver = StreamDriver(Settings())
    desired = _spec("orders", wire.STREAM_TYPE, name="ORDERS2", url="nats://h:2", subjects=["o"])
    current = ipb.ResourceOutput(provider_id="nats://h:1#ORDERS")
    result = await driver.diff(desired, current)  # decided from the ids alone
    assert result.needs_replace
    assert {c.path: json.loads(c.new_json) for c in result.changes} == {
        "url": "nats://h:2",
        "stream": "ORDERS2",
    }


async def test_a_broker_without_the_admin_capability_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every broker provider has it today; the test double stands in for one without.
    monkeypatch.setattr(drivers, "provider_for_url", lambda _url: REGISTRY["memory"])
    spec = _spec("orders", wire.STREAM_TYPE, name="ORDERS", subjects=["orders.>"], url="x://h:1")
    with pytest.raises(ConfigError) as caught:
        await StreamDriver(Settings()).create(spec)
    message = str(caught.value)
    assert "provider memory has no admin capability" in message
    admin = [s.name for s in REGISTRY.values() if Feature.ADMIN in s.features and not s.test_double]
    assert message.endswith(f"use a broker whose provider is {' or '.join(admin)}")


async def test_an_unknown_url_scheme_names_every_provider_with_the_admin_capability() -> None:
    spec = _spec("orders", wire.STREAM_TYPE, name="ORDERS", subjects=["orders.>"], url="x://h:1")
    with pytest.raises(ConfigError) as caught:
        await StreamDriver(Settings()).create(spec)
    message = str(caught.value)
    assert "url: names no broker this plugin knows" in message
    admin = [s for s in REGISTRY.values() if Feature.ADMIN in s.features and not s.test_double]
    assert "kafka" in [s.name for s in admin]  # kafka:// brokers are IaC targets too
    for provider in admin:
        assert f"({provider.name})" in message
        for scheme in provider.url_schemes:
            assert f"{scheme}://" in message


async def test_plan_creates_new_diffs_existing_and_deletes_removed(tmp_path: Path) -> None:
    provider = Provider()
    data_dir = tmp_path / "nats"  # no server runs there: the existing one is down
    desired = [
        _spec("srv", wire.SERVER_TYPE, data_dir=str(data_dir)),
        _spec("new", wire.SERVER_TYPE, data_dir=str(tmp_path / "other")),
    ]
    current = [
        ipb.ResourceState(name="srv", type=wire.SERVER_TYPE, provider_id=str(data_dir)),
        ipb.ResourceState(name="gone", type=wire.SERVER_TYPE, provider_id="/nowhere"),
    ]
    plan = await provider.plan(ipb.PlanRequest(desired=desired, current=current))
    actions = [(a.action, a.resource.name) for a in plan.actions]
    assert actions == [("update", "srv"), ("create", "new"), ("delete", "gone")]
    assert [c.path for c in plan.actions[0].changes] == ["running"]


async def test_destroy_reports_each_failure_and_continues() -> None:
    refs = [
        ipb.ResourceRef(name="bad", type=wire.STREAM_TYPE, provider_id="not-an-id"),
        ipb.ResourceRef(name="odd", type="infra.database", provider_id="x"),
    ]
    result = await Provider().destroy(refs)
    assert list(result.destroyed) == []
    errors = {e.resource: (e.action, e.error) for e in result.errors}
    assert sorted(errors) == ["bad", "odd"]
    assert errors["bad"][0] == "delete" and "provider_id" in errors["bad"][1]
    assert "use one of: infra.eventbus_server" in errors["odd"][1]


def test_the_registry_and_plugin_json_name_the_same_iac_services() -> None:
    registered = [
        d.service_name
        for d in contracts.contract_registry().contracts
        if d.kind == ppb.CONTRACT_KIND_SERVICE
    ]
    assert registered == wire.service_names() == contracts.plugin_json()["iacServices"]
    assert "workflow.plugin.external.iac.IaCProviderRequired" in registered
    manifest = contracts.plugin_json()
    assert manifest["capabilities"]["iacProvider"]["name"] == wire.PROVIDER_NAME
    assert manifest["iacProvider"]["computePlanVersion"] == "v2"
