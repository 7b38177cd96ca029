"""The IaC generator's dispatch and builders (engine/iac)."""

import pytest

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.defaults import DEFAULT_KAFKA_REPLICATION
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.engine import iac
from workflow_eventbus.providers import REGISTRY

GIB10 = 10 * 1024**3


def broker(target="", name="bus", streams=(), **kw):
    kw.setdefault("provider", "nats")
    return iac.Broker(name, pb.ClusterConfig(deploy_target=target, **kw), tuple(streams))


def one(b, **options):
    return iac.build(b, iac.Options(**options))


@pytest.mark.parametrize(
    ("provider", "target"),
    [(s.name, t) for s in REGISTRY.values() if not s.test_double for t in s.deploy_targets or [""]],
)
def test_every_provider_and_target_of_the_registry_has_a_builder(provider, target):
    cfg = {"provider": provider, "kinesis": {"region": "eu-west-1"}}
    if provider == "pgchannel":
        cfg["broker_target"] = "in_process"
    built = iac.build(
        iac.Broker("bus", pb.ClusterConfig(deploy_target=target, **cfg)), iac.Options()
    )
    # Something for a tool, or at least a statement of what the operator does.
    assert built.modules or built.files or built.sidecars or built.notes
    assert all(note.strip() for note in built.notes)


def test_the_test_double_and_bad_targets_are_refused():
    with pytest.raises(ConfigError, match="is the in-process unit-test double"):
        one(broker(provider="memory"))
    with pytest.raises(ConfigError, match="does not support this deploy target"):
        one(broker("aws.kinesis"))


def test_app_platform_properties_have_the_types_the_digitalocean_driver_reads():
    built = one(broker("digitalocean.app_platform", jetstream={"max_storage_bytes": GIB10}))
    (module,) = built.modules
    assert (module.name, module.type) == ("bus-nats", "infra.container_service")
    assert module.config == {
        "provider": "do-provider",
        "image": "docker.io/library/nats:2.10-alpine",
        "instance_count": 1,
        "run_command": "nats-server --jetstream --store_dir /data/jetstream --http_port 8222 "
        "--server_name bus",
        "expose": "internal",
        "internal_ports": [4222, 8222],
        "health_check": {
            "http_path": "/healthz",
            "port": 8222,
            "initial_delay_seconds": 5,
            "period_seconds": 10,
        },
    }
    assert any("ephemeral disk" in n and "Spaces" in n for n in built.notes)
    assert not built.files and not built.sidecars  # no infra.storage: Spaces holds no store
    named = one(broker("digitalocean.app_platform", version="2.11"), do_provider="do")
    assert named.modules[0].config["provider"] == "do"
    assert named.modules[0].config["image"].endswith(":2.11-alpine")


def test_app_platform_refuses_a_cluster_and_r3_streams():
    with pytest.raises(ConfigError, match="replicas: App Platform instances cannot form"):
        one(broker("digitalocean.app_platform", replicas=3))
    r3 = pb.StreamConfig(name="ORDERS", subjects=["o.>"], num_replicas=3)
    with pytest.raises(ConfigError, match='stream "ORDERS": num_replicas: is more than the 1'):
        one(broker("digitalocean.app_platform", streams=[r3]))


def test_latest_is_refused_and_names_must_make_dns_labels():
    with pytest.raises(ConfigError, match="floating tags are not allowed"):
        one(broker("kubernetes", version="LATEST"))
    with pytest.raises(ConfigError, match="cannot name generated resources"):
        one(broker("digitalocean.app_platform", name="a-broker-name-far-too-long-for-do"))
    with pytest.raises(ConfigError, match="two brokers generate the same infra module"):
        iac.generate(
            [
                broker("digitalocean.app_platform", "my_bus"),
                broker("digitalocean.app_platform", "my-bus"),
            ]
        )


def test_self_hosted_cluster_has_one_config_and_unit_per_server_routing_to_all():
    built = one(broker("self_hosted", replicas=3, jetstream={"max_memory_bytes": 1024}))
    paths = [f.path for f in built.files]
    assert paths == [f"bus/nats-{i}.{ext}" for i in range(3) for ext in ("conf", "service")]
    conf = built.files[2].text
    assert "server_name: bus-nats-1\n" in conf and "max_memory_store: 1024\n" in conf
    for i in range(3):
        assert f'"nats://bus-nats-{i}:6222"' in conf
    unit = built.files[3].text
    assert "ExecStart=/usr/local/bin/nats-server -c /etc/nats/bus/nats-1.conf\n" in unit
    assert "StateDirectory=nats/bus\n" in unit and 'store_dir: "/var/lib/nats/bus"' in conf
    single = one(broker("self_hosted"))
    assert [f.path for f in single.files] == ["bus/nats-server.conf", "bus/nats-server.service"]
    assert "cluster {" not in single.files[0].text


def test_pgchannel_gives_the_migration_command_and_managed_services_a_statement():
    pg = one(broker(provider="pgchannel", broker_target="in_process", schema="orders"))
    (script,) = pg.files
    assert script.path == "bus/migrate.sh"
    assert 'exec workflow-plugin-eventbus migrate --schema orders "$@"\n' in script.text
    kafka = one(broker("aws.msk", provider="kafka", kafka={"default_replication_factor": 3}))
    assert not (kafka.modules or kafka.files) and "replication factor 3" in kafka.notes[0]
    unset = one(broker("aws.msk", provider="kafka")).notes[0]  # what the runtime uses
    assert f"replication factor {DEFAULT_KAFKA_REPLICATION} (the default, at most the" in unset
    assert "min in-sync replicas the broker's min.insync.replicas" in unset
    kinesis = one(broker("aws.kinesis", provider="kinesis", kinesis={"region": "eu-west-1"}))
    assert "region eu-west-1, 1 shard(s)" in kinesis.notes[0]
    ecs = one(broker("aws.ecs"))
    assert not ecs.files and "nothing generated" in ecs.notes[0]
