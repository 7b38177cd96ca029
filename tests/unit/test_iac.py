"""IaC declarations for every provider x deploy target."""

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.engine import iac
from workflow_eventbus.providers import REGISTRY

GIB10 = 10 * 1024**3


def nats(target, **kw):
    return pb.ClusterConfig(provider="nats", deploy_target=target, **kw)


def test_digitalocean_app_platform_matches_the_go_shapes():
    cfg = nats("digitalocean.app_platform", jetstream={"enabled": True, "max_storage_bytes": GIB10})
    container, storage = iac.resources(cfg)
    assert container.kind == "infra.container_service" and container.name == "nats"
    assert dict(container.properties) == {
        "image": "docker.io/library/nats:2.10",
        "instance_count": "1",
        "run_command": "-m 8222 -js -sd /data -ms 10737418240 --cluster nats://0.0.0.0:6222",
        "internal_ports": "4222,8222,6222",
        "storage_ref": "nats-jetstream",
    }
    assert dict(container.labels) == {
        "provider": "nats",
        "deploy_target": "digitalocean.app_platform",
    }
    assert storage == iac.Resource(
        "infra.storage",
        "nats-jetstream",
        {"storage_size_bytes": str(GIB10)},
        {"provider": "nats", "purpose": "jetstream"},
    )


def test_without_jetstream_there_is_no_storage_and_cluster_flag_stays():
    (only,) = iac.resources(nats("digitalocean.app_platform", replicas=3, version="2.11"))
    assert only.properties["run_command"] == "-m 8222 --cluster nats://0.0.0.0:6222"
    assert only.properties["instance_count"] == "3"
    assert only.properties["image"].endswith(":2.11")


def test_latest_is_refused():
    with pytest.raises(ConfigError, match="floating tags are not allowed"):
        iac.resources(nats("kubernetes", version="LATEST"))


@pytest.mark.parametrize(
    ("provider", "target"), [(s.name, t) for s in REGISTRY.values() for t in s.deploy_targets]
)
def test_every_pair_declares_resources(provider, target):
    cfg = pb.ClusterConfig(provider=provider, deploy_target=target, kinesis={"region": "eu-west-1"})
    out = iac.resources(cfg)
    assert out, f"{provider} x {target} declared nothing"
    assert all(r.labels["deploy_target"] == target for r in out if "deploy_target" in r.labels)


def test_kubernetes_statefulset_routes_every_replica():
    sts, headless, client = iac.resources(
        nats("kubernetes", replicas=3, jetstream={"enabled": True})
    )
    assert sts.kind == "kubernetes.statefulset" and sts.properties["replicas"] == "3"
    assert "nats://nats-2.nats-headless:6222" in sts.properties["args"]
    assert headless.properties["cluster_ip"] == "None" and client.properties["ports"] == "4222"


def test_pgchannel_and_unsupported_pairs():
    (schema,) = iac.resources(
        pb.ClusterConfig(provider="pgchannel", broker_target="in_process", schema="bus")
    )
    assert schema.kind == "postgres.schema" and schema.properties["schema"] == "bus"
    with pytest.raises(ConfigError, match="does not support this deploy target"):
        iac.resources(nats("aws.kinesis"))
    with pytest.raises(ConfigError, match="kinesis.region: is required"):
        iac.resources(pb.ClusterConfig(provider="kinesis", deploy_target="aws.kinesis"))


def test_stream_resources_use_go_property_names():
    streams = [
        pb.StreamConfig(
            name="ORDERS",
            subjects=["orders.>", "refunds.>"],
            retention_policy=pb.RETENTION_POLICY_WORKQUEUE,
            max_age={"seconds": 604800},
            ack_wait={"seconds": 30},
        )
    ]
    (res,) = iac.stream_resources(streams, iac.State({"uri": iac.Output("nats://n:4222")}))
    assert res.kind == "nats.stream_create"
    assert dict(res.properties) == {
        "name": "ORDERS",
        "subjects": "orders.>,refunds.>",
        "retention_policy": "workqueue",
        "num_replicas": "1",
        "max_bytes": "0",
        "server_uri": "nats://n:4222",
        "max_age": "168h0m0s",
        "ack_wait": "30s",
    }
    with pytest.raises(ConfigError, match="subjects"):
        iac.stream_resources([pb.StreamConfig(name="X")], iac.State())


def test_go_duration_text():
    assert [iac.go_duration(s) for s in (0.5, 30, 90, 3600)] == ["500ms", "30s", "1m30s", "1h0m0s"]


def test_connection_string_prefers_env_output():
    state = iac.State({"uri": iac.Output("nats://a"), "uri.staging": iac.Output("nats://s")})
    assert iac.connection_string(state, "staging") == "nats://s"
    assert iac.connection_string(state, "prod") == "nats://a"
    with pytest.raises(ConfigError, match="uri"):
        iac.connection_string(iac.State())


async def test_probe_a_real_server_and_a_closed_port(nats_server):
    assert await iac.probe("127.0.0.1", nats_server.port) == "healthy"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await iac.probe("127.0.0.1", port) == "unreachable"
