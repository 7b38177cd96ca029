"""The engine's own tooling (wfctl) accepts the plugin and every example config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from engine_harness import APPS, PLUGIN_NAME, REPO, run_wfctl

pytestmark = pytest.mark.interop

CONFIGS = sorted([*APPS.glob("*.yaml"), *(REPO / "examples").glob("*.yaml")])


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_verify_capabilities_handshakes_with_the_launcher(
    engine_bin: Path, plugins_dir: Path
) -> None:
    folder = plugins_dir / PLUGIN_NAME
    done = run_wfctl(
        engine_bin,
        "plugin",
        "verify-capabilities",
        "--binary",
        str(folder / PLUGIN_NAME),
        str(folder),
    )
    assert done.returncode == 0, _explain(done)
    assert done.stdout.startswith(f"OK    {PLUGIN_NAME} "), _explain(done)


def test_plugin_audit_with_strict_contracts_passes_on_the_installed_plugin(
    engine_bin: Path, plugins_dir: Path
) -> None:
    done = run_wfctl(
        engine_bin, "plugin", "audit", "-strict-contracts", str(plugins_dir / PLUGIN_NAME)
    )
    assert done.returncode == 0, _explain(done)
    assert "0 error(s)" in done.stdout, _explain(done)


def test_audit_plugins_with_strict_contracts_passes_on_the_plugins_dir(
    engine_bin: Path, plugins_dir: Path
) -> None:
    done = run_wfctl(
        engine_bin,
        "audit",
        "plugins",
        "-strict",
        "-strict-contracts",
        "-repo-root",
        str(plugins_dir),
    )
    assert done.returncode == 0, _explain(done)
    assert "1 plugin(s), 1 canonical" in done.stdout, _explain(done)
    assert "0 warning(s), 0 error(s)" in done.stdout, _explain(done)


def test_plugin_audit_with_strict_contracts_passes_on_the_repo_manifest(engine_bin: Path) -> None:
    done = run_wfctl(engine_bin, "plugin", "audit", "-strict", "-strict-contracts", str(REPO))
    assert done.returncode == 0, _explain(done)
    assert "0 warning(s), 0 error(s)" in done.stdout, _explain(done)


def _has_entry_points(config: Path) -> bool:
    spec = yaml.safe_load(config.read_text()) or {}
    return any(spec.get(key) for key in ("pipelines", "workflows", "triggers"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_validate_with_plugin_dir_passes(engine_bin: Path, plugins_dir: Path, config: Path) -> None:
    args = ["validate", "--plugin-dir", str(plugins_dir)]
    if not _has_entry_points(config):
        # A library-only example (modules, no pipelines): its modules are still
        # checked; only the "an app needs an entry point" rule is waived.
        args.append("--allow-no-entry-points")
    done = run_wfctl(engine_bin, *args, str(config))
    assert done.returncode == 0, _explain(done)
    assert f"PASS {config}" in done.stdout, _explain(done)


def test_validate_without_plugin_dir_rejects_the_eventbus_types(engine_bin: Path) -> None:
    # The control for the test above: validate does check module types.
    done = run_wfctl(engine_bin, "validate", str(APPS / "orders.yaml"))
    assert done.returncode != 0, _explain(done)
    assert 'unknown module type "eventbus.' in done.stdout + done.stderr, _explain(done)


async def test_wfctl_pipeline_run_publishes_without_engine_start(
    engine_bin: Path, plugins_dir: Path, nats_server, tmp_path: Path
) -> None:
    """`wfctl pipeline run` creates and initialises modules but never starts them:
    the publish step starts them itself, and the event lands in the stream."""
    import nats

    app = tmp_path / "app.yaml"
    text = (REPO / "examples" / "eventbus-app.yaml").read_text()
    app.write_text(text.replace("nats://127.0.0.1:4222", nats_server.url))
    done = run_wfctl(
        engine_bin,
        "pipeline",
        "run",
        "-c",
        str(app),
        "-p",
        "place-order",
        "--plugin-dir",
        str(plugins_dir),
    )
    assert done.returncode == 0, _explain(done)
    assert "Pipeline completed successfully" in done.stdout, _explain(done)
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info("ORDERS")
        assert info.state.messages >= 1
        last = await nc.jetstream().get_last_msg("ORDERS", "orders.created")
        assert last.data
    finally:
        await nc.close()
