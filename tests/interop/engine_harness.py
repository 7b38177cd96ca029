"""Drive the real workflow engine (cmd/server, cmd/wfctl) from tests.

The engine binaries come from ``interop/build.sh`` (built from the Go module proxy
at the version pinned in ``interop/go.mod``, cached by version), or from
``$WORKFLOW_ENGINE_BIN_DIR`` when that points at a directory holding ``server``
and ``wfctl``.

``EngineServer`` runs ``server -config APP -data-dir DATA`` the way a user would:
the plugin is installed under ``DATA/plugins``, the working directory is the data
directory (so no stray ``.wfctl.yaml`` lockfile above the repo is picked up), and
``${VAR}`` placeholders in module config come from the environment it is given.
It knows the plugin processes the engine launched (children whose working
directory is the installed plugin directory) so a test can check that none is left
after the engine stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

# The plugin install and the process lookups are shared with the engine bench.
from workflow_eventbus.devservers.engine import alive as _alive
from workflow_eventbus.devservers.engine import install_plugin, poll_until, processes_in

REPO = Path(__file__).resolve().parents[2]
INTEROP = REPO / "interop"
APPS = INTEROP / "apps"
PLUGIN_NAME = "workflow-plugin-eventbus"
ENV_BIN_DIR = "WORKFLOW_ENGINE_BIN_DIR"
POLL = 0.05


class EngineError(AssertionError):
    """Raised when the engine does not start, stop or behave as a test expects."""


def engine_binaries() -> Path:
    """The directory with ``server`` and ``wfctl``: ``$WORKFLOW_ENGINE_BIN_DIR`` or a build."""
    configured = os.environ.get(ENV_BIN_DIR, "")
    if configured:
        folder = Path(configured)
    else:
        done = subprocess.run(
            ["bash", str(INTEROP / "build.sh")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise EngineError(
                f"interop/build.sh failed with exit code {done.returncode}:\n{done.stderr[-4000:]}"
            )
        folder = Path(done.stdout.strip().splitlines()[-1])
    for name in ("server", "wfctl"):
        if not os.access(folder / name, os.X_OK):
            raise EngineError(f"{folder / name} is missing or not executable")
    return folder


def run_wfctl(
    bin_dir: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "wfctl"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Poll a condition until it holds (the engine module's poller, shared with the bench).
wait_for = poll_until


class EngineServer:
    """One ``cmd/server`` process running an app config with the plugin installed."""

    def __init__(
        self,
        bin_dir: Path,
        config: Path,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.config = config
        self.data_dir = data_dir
        self.plugin_dir = data_dir / "plugins" / PLUGIN_NAME
        self.log_path = data_dir / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.plugin_pids: list[int] = []

    def start(self) -> None:
        if not self.plugin_dir.is_dir():
            install_plugin(self.data_dir / "plugins")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin_dir / "server"),
                    "-config",
                    str(self.config),
                    "-data-dir",
                    str(self.data_dir),
                ],
                cwd=self.data_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the test terminal must not reach it.
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise EngineError("the engine was not started")
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise with the log tail if the engine has exited."""
        if self.proc is None:
            raise EngineError("the engine was not started")
        code = self.proc.poll()
        if code is not None:
            raise EngineError(f"the engine exited with code {code}; log tail:\n{self.log_tail()}")

    async def wait_plugin_loaded(self, timeout: float = 60.0) -> None:
        """Until the engine logs that it loaded the plugin; records the plugin PIDs."""
        await wait_for(
            lambda: f'"{PLUGIN_NAME}" loaded successfully' in self.log(),
            timeout=timeout,
            what="the engine to load the plugin",
            check=self._check_not_rejected,
        )
        self.plugin_pids = processes_in(self.plugin_dir)
        if not self.plugin_pids:
            raise EngineError("the engine loaded the plugin but no plugin process was found")

    async def wait_started(self, timeout: float = 60.0) -> None:
        """Until ``engine.Start`` has returned: every module and trigger is started.

        cmd/server logs this line from its post-start hooks, which run right after
        ``engine.Start`` (modules, then the plugin's trigger handles) succeeded.
        """
        await wait_for(
            lambda: "Registered all post-start services" in self.log(),
            timeout=timeout,
            what="the engine to finish starting",
            check=self._check_not_rejected,
        )

    async def wait_listening(self, port: int, timeout: float = 60.0) -> None:
        async def connects() -> bool:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await wait_for(
            connects,
            timeout=timeout,
            what=f"the engine to listen on {port}",
            check=self.check_running,
        )

    def _check_not_rejected(self) -> None:
        text = self.log()
        for marker in ("Failed to load external plugin", "Failed to register external plugin"):
            if marker in text:
                raise EngineError(f"{marker}; log tail:\n{self.log_tail()}")
        self.check_running()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the engine, wait for it, then for every plugin process to be gone.

        Returns the engine's exit code. Raises if the engine or a plugin process
        outlives the deadline (both are then killed so the test run stays clean).
        """
        if self.proc is None:
            raise EngineError("the engine was not started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await wait_for(
                lambda: self.proc is not None and self.proc.poll() is not None,
                timeout=timeout,
                what="the engine to exit after SIGTERM",
            )
        except EngineError:
            self.proc.kill()
            self.proc.wait()
            raise
        leftovers = set(self.plugin_pids) | set(processes_in(self.plugin_dir))
        try:
            await wait_for(
                lambda: not any(_alive(pid) for pid in leftovers),
                timeout=10.0,
                what=f"plugin processes {sorted(leftovers)} to exit",
            )
        except EngineError:
            for pid in leftovers:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            raise
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the engine (no StopModule, no plugin shutdown) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def crash(self) -> None:
        """kill -9 the engine and its plugin processes together, as when their host dies:
        nothing is stopped, drained, acked or nak'd."""
        # The plugins first: a plugin that outlived its engine even by a moment would
        # see its callbacks fail and nak what it holds, which a dead host never does.
        for pid in set(self.plugin_pids) | set(processes_in(self.plugin_dir)):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.kill()

    def cleanup(self) -> None:
        """Last-resort teardown: nothing this server started may outlive the test."""
        self.kill()
        for pid in set(self.plugin_pids) | set(processes_in(self.plugin_dir)):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def start_replicas(
    make: Callable[..., EngineServer],
    config: Path,
    count: int,
    env: Mapping[str, str],
    *,
    http: bool = False,
) -> list[tuple[EngineServer, int]]:
    """``count`` cmd/server processes running the same app, started together.

    Each has its own data directory (``make`` gives one per server) and, with ``http``,
    its own ``EVENTBUS_HTTP_ADDR`` port (0 without). Returns once every one has
    finished starting (modules and triggers).
    """
    replicas = []
    for _ in range(count):
        port = free_port() if http else 0
        extra = {"EVENTBUS_HTTP_ADDR": f"127.0.0.1:{port}"} if http else {}
        server = make(config, {**env, **extra})
        server.start()
        replicas.append((server, port))
    for server, port in replicas:
        await server.wait_plugin_loaded()
        await server.wait_started()
        if port:
            await server.wait_listening(port)
    return replicas


def post_accepted(url: str, body: bytes) -> dict[str, str]:
    """POST ``body``; the route must answer 202 with a JSON object, which is returned."""
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202, response.status
        result: dict[str, str] = json.loads(response.read())
        return result
