"""The generator and upgrade-config against the engine's own IaC tools (the real wfctl).

``wfctl infra plan`` reads only ``infra.*`` / ``platform.*`` modules of the app and the
files it imports; with no ``iac.provider`` module it plans offline. So: what the
generator writes is what wfctl plans, its typed properties are what ``wfctl infra
test`` compares, and an app with the old ``infra.eventbus*`` names has its brokers
planned as cloud resources until upgrade-config rewrites them.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from engine_harness import APPS, run_wfctl

from workflow_eventbus.cli.main import main

pytestmark = pytest.mark.interop

APP = """\
name: shop
imports: [eventbus.infra.yaml]
modules:
  - name: bus
    type: eventbus.broker
    config:
      provider: nats
      deploy_target: digitalocean.app_platform
      dsn: nats://bus-nats:4222
  - name: cluster
    type: eventbus.broker
    config: {provider: nats, deploy_target: kubernetes, replicas: 3}
  - name: ledger
    type: eventbus.broker
    config: {provider: pgchannel, broker_target: in_process, schema: ledger}
  - name: orders
    type: eventbus.stream
    config: {name: ORDERS, subjects: ["orders.>"], broker_ref: cluster, num_replicas: 3}
pipelines:
  noop:
    trigger:
      type: trigger.eventbus.subscribe
      config: {name: worker, stream_name: ORDERS, broker_ref: cluster}
    steps:
      - name: log
        type: step.log
        config: {level: info, message: "got one"}
"""

# The App Platform broker on NATS 2.11 instead of the default.
PINNED_211 = APP.replace(
    "deploy_target: digitalocean.app_platform",
    "deploy_target: digitalocean.app_platform\n      version: '2.11'",
)

EXPECT = """\
config: app.yaml
expect:
  resources_count: 1
  resources:
    - name: bus-nats
      type: infra.container_service
      config:
        provider: do-provider
        instance_count: 1
        expose: internal
        internal_ports: {ports}
        health_check: {{http_path: /healthz, port: 8222}}
  plan:
    action_counts: {{create: 1}}
    actions:
      - action: create
        resource: {{name: bus-nats, type: infra.container_service}}
"""


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def planned(engine_bin: Path, app: Path) -> list[tuple[str, str, str]]:
    """(action, name, type) of every line of ``wfctl infra plan -c app``."""
    done = run_wfctl(engine_bin, "infra", "plan", "-c", str(app), cwd=app.parent)
    assert done.returncode == 0, _explain(done)
    return re.findall(r"^[+~\-!] (\w+)\s+(\S+)\s+\(([^)]+)\)$", done.stdout, re.M)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "app.yaml"
    path.write_text(APP)
    assert main(["infra", "--config", str(path)]) == 0
    return path


def test_wfctl_infra_plan_lists_the_generated_resources_and_only_them(
    engine_bin: Path, app: Path
) -> None:
    assert planned(engine_bin, app) == [("create", "bus-nats", "infra.container_service")]
    # The generated files for other tools are there, and nothing else plans them.
    folder = app.parent / "eventbus.infra.files"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*")) == [
        "cluster/nats.k8s.yaml",
        "ledger/migrate.sh",
    ]


def test_wfctl_infra_test_passes_on_the_typed_properties_and_fails_on_strings(
    engine_bin: Path, app: Path
) -> None:
    good = app.parent / "infra.test.yaml"
    good.write_text(EXPECT.format(ports="[4222, 8222]"))
    done = run_wfctl(engine_bin, "infra", "test", str(good))
    assert done.returncode == 0, _explain(done)
    assert f"PASS {good} (1 resources, 1 plan actions)" in done.stdout, _explain(done)
    # The Go plugin's shape (ports as one string) is not what was generated.
    bad = app.parent / "infra.string-ports.test.yaml"
    bad.write_text(EXPECT.format(ports='"4222,8222"'))
    done = run_wfctl(engine_bin, "infra", "test", str(bad))
    assert done.returncode != 0, _explain(done)
    assert "internal_ports" in done.stderr, _explain(done)


def go_config_hash(config: dict) -> str:
    """platform.ConfigHash: SHA-256 of Go's json.Marshal of the sorted (K, V) pairs."""
    pairs = [{"K": k, "V": config[k]} for k in sorted(config)]
    data = json.dumps(pairs, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def test_after_apply_a_regenerated_file_plans_nothing_and_a_change_one_update(
    engine_bin: Path, app: Path
) -> None:
    generated = yaml.safe_load((app.parent / "eventbus.infra.yaml").read_text())
    (module,) = generated["modules"]
    state = app.parent / "applied.test.yaml"

    def infra_test(expect: str) -> subprocess.CompletedProcess[str]:
        state.write_text(
            "config: app.yaml\n"
            "current_state:\n"
            "  - name: bus-nats\n"
            "    type: infra.container_service\n"
            "    provider: digitalocean\n"
            f"    config_hash: {go_config_hash(module['config'])}\n"
            f"expect:\n  plan:\n    action_counts: {expect}\n"
        )
        return run_wfctl(engine_bin, "infra", "test", str(state))

    assert main(["infra", "--config", str(app)]) == 0  # as after a deploy: same bytes
    done = infra_test("{create: 0, update: 0}")
    assert done.returncode == 0, _explain(done)
    assert "(1 resources, 0 plan actions)" in done.stdout, _explain(done)
    app.write_text(PINNED_211)
    assert main(["infra", "--config", str(app)]) == 0
    done = infra_test("{create: 0, update: 1}")
    assert done.returncode == 0, _explain(done)


def test_a_rerun_is_byte_identical_and_check_finds_a_stale_file(
    engine_bin: Path, app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = app.parent
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["infra", "--config", str(app)]) == 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert main(["infra", "--config", str(app), "--check"]) == 0
    app.write_text(PINNED_211)
    capsys.readouterr()
    assert main(["infra", "--config", str(app), "--check"]) == 1
    assert f"stale: {folder / 'eventbus.infra.yaml'}" in capsys.readouterr().err
    assert main(["infra", "--config", str(app)]) == 0
    config = yaml.safe_load((folder / "eventbus.infra.yaml").read_text())["modules"][0]["config"]
    assert config["image"] == "docker.io/library/nats:2.11-alpine"


def test_old_names_are_planned_as_cloud_resources_until_upgrade_config(
    engine_bin: Path, tmp_path: Path
) -> None:
    app = tmp_path / "go-shapes.yaml"
    app.write_text((APPS / "go-shapes.yaml").read_text())
    assert planned(engine_bin, app) == [
        ("create", "bus", "infra.eventbus"),
        ("create", "fulfillment-stream", "infra.eventbus.stream"),
        ("create", "settlement-consumer", "infra.eventbus.consumer"),
    ]
    assert main(["upgrade-config", str(app), "--write"]) == 0
    done = run_wfctl(engine_bin, "infra", "plan", "-c", str(app), cwd=tmp_path)
    assert done.returncode == 0, _explain(done)
    assert "No changes. Infrastructure is up-to-date." in done.stdout, _explain(done)
    # Generated for the App Platform broker, the import is all wfctl plans.
    text = app.read_text().replace(
        "\nmodules:\n", "\nimports: [eventbus.infra.yaml]\nmodules:\n", 1
    )
    app.write_text(text)
    assert main(["infra", "--config", str(app)]) == 0
    assert planned(engine_bin, app) == [("create", "bus-nats", "infra.container_service")]


def test_the_sidecar_form_reaches_wfctl_deploy_k8s_generate(
    engine_bin: Path, tmp_path: Path
) -> None:
    app = tmp_path / "app.yaml"
    app.write_text(
        "name: sidecar-shop\nimports: [eventbus.infra.yaml]\nmodules:\n"
        "  - name: bus\n    type: eventbus.broker\n"
        "    config: {provider: nats, deploy_target: kubernetes, dsn: 'nats://127.0.0.1:4222'}\n"
    )
    assert main(["infra", "--config", str(app), "--k8s-sidecar"]) == 0
    out = tmp_path / "k8s"
    done = run_wfctl(
        engine_bin,
        "deploy",
        "k8s",
        "generate",
        "-config",
        str(app),
        "-image",
        "shop:1",
        "-output",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, _explain(done)
    (deployment,) = [yaml.safe_load(p.read_text()) for p in out.glob("deployment-*.yaml")]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    nats = next(c for c in containers if c["name"] == "bus-nats")
    assert nats["image"] == "docker.io/library/nats:2.10-alpine"
    assert nats["command"] == ["nats-server"] and "--jetstream" in nats["args"]
    assert sorted(p["containerPort"] for p in nats["ports"]) == [4222, 8222]
