"""Generated NATS servers checked by the tools that read them, offline: the Kubernetes
schemas (kubernetes-validate), nats-server's own config test (``-t``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.devservers.nats_server import find_server_binary
from workflow_eventbus.engine import iac

K8S_VERSIONS = ("1.30", latest_version())


def broker(replicas: int = 0, target: str = "kubernetes", **kw: object) -> iac.Broker:
    cfg = pb.ClusterConfig(provider="nats", deploy_target=target, replicas=replicas, **kw)
    return iac.Broker("orders-bus", cfg)


def manifests(b: iac.Broker) -> list[dict]:
    (only,) = iac.build(b, iac.Options()).files
    assert only.path == "orders-bus/nats.k8s.yaml"
    return list(yaml.safe_load_all(only.text))


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def nats_config_test(conf: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    path = tmp_path / "nats.conf"
    path.write_text(conf)
    done = subprocess.run(
        [str(find_server_binary()), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "is valid" in done.stderr + done.stdout


@pytest.mark.parametrize("target", ["kubernetes", "aws.eks"])
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_an_r3_cluster_is_valid_against_the_kubernetes_schemas(target: str, version: str) -> None:
    limits = {"cpu": "500m", "memory": "1Gi", "storage": "20Gi"}
    docs = manifests(broker(3, target, limits=limits))
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = by_kind(docs)
    assert sorted(kinds) == ["ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"]
    (sts,) = kinds["StatefulSet"]
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["serviceName"] == "orders-bus-nats-headless"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    assert container["command"] == ["nats-server"]
    assert container["args"] == ["--config", "/etc/nats/nats.conf"]
    headless = next(s for s in kinds["Service"] if s["spec"].get("clusterIP") == "None")
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert kinds["PodDisruptionBudget"][0]["spec"]["maxUnavailable"] == 1


def test_every_pod_routes_to_every_pod_and_the_config_passes_nats_server(tmp_path: Path) -> None:
    docs = by_kind(manifests(broker(3, jetstream={"max_storage_bytes": 10 * 1024**3})))
    conf = docs["ConfigMap"][0]["data"]["nats.conf"]
    for i in range(3):
        assert f'"nats://orders-bus-nats-{i}.orders-bus-nats-headless:6222"' in conf
    assert "max_file_store: 10737418240" in conf and 'name: "orders-bus"' in conf
    (claim,) = docs["StatefulSet"][0]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "11264Mi"  # the cap + 10%
    nats_config_test(conf, tmp_path, {"POD_NAME": "orders-bus-nats-1"})


def test_one_server_has_no_cluster_and_no_disruption_budget(tmp_path: Path) -> None:
    docs = by_kind(manifests(broker(1)))
    assert "PodDisruptionBudget" not in docs
    conf = docs["ConfigMap"][0]["data"]["nats.conf"]
    assert "cluster {" not in conf
    (claim,) = docs["StatefulSet"][0]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    nats_config_test(conf, tmp_path, {"POD_NAME": "orders-bus-nats-0"})


def test_self_hosted_configs_pass_nats_server(tmp_path: Path) -> None:
    built = iac.build(broker(3, "self_hosted"), iac.Options())
    for file in built.files:
        if file.path.endswith(".conf"):
            nats_config_test(file.text, tmp_path)


def test_the_sidecar_form_is_a_generic_sidecar_for_one_server() -> None:
    built = iac.build(broker(1), iac.Options(k8s_sidecar=True))
    assert not built.files and not built.modules
    (sidecar,) = built.sidecars
    assert sidecar["type"] == "sidecar.generic" and sidecar["name"] == "orders-bus-nats"
    assert sidecar["config"]["command"] == ["nats-server"]
    assert sidecar["config"]["ports"] == [4222, 8222]
    assert "--jetstream" in sidecar["config"]["args"]
    with pytest.raises(ConfigError, match="a sidecar is one NATS server per app pod"):
        iac.build(broker(3), iac.Options(k8s_sidecar=True))
