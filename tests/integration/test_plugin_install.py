"""`install --plugins-dir` output, launched exactly as the engine launches it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_eventbus.devservers.host import PluginHost

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_installed_launcher_serves_the_plugin(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_eventbus.cli.main",
            "install",
            "--plugins-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "installed" in done.stdout
    plugin_dir = tmp_path / "workflow-plugin-eventbus"
    launcher = plugin_dir / "workflow-plugin-eventbus"
    assert launcher.stat().st_mode & stat.S_IXUSR
    assert "exec " in launcher.read_text()
    manifest = json.loads((plugin_dir / "plugin.json").read_text())
    contracts = json.loads((plugin_dir / "plugin.contracts.json").read_text())
    assert manifest["name"] == "workflow-plugin-eventbus" and contracts["version"] == "1"

    # The engine: absolute path, no arguments, cwd = the plugin's directory.
    async with PluginHost([str(launcher)], cwd=plugin_dir) as host:
        assert (await host.manifest()).version == manifest["version"]
        # exec replaced the shell: the pid the engine signals is Python's.
        exe = os.readlink(f"/proc/{host.pid}/exe")
        assert "python" in Path(exe).name, exe
