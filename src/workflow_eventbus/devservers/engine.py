"""The real workflow engine (``cmd/server``) as a child process, for the demo, bench and tests.

The binaries come from ``interop/build.sh`` in a source checkout (built from the Go
module proxy at the version pinned in ``interop/go.mod``, cached by version) or
from ``$WORKFLOW_ENGINE_BIN_DIR`` when that names a directory holding ``server``
and ``wfctl``: :func:`engine_binaries` builds when needed (bench, tests),
:func:`find_engine` only looks (the demo's ``--engine``).

``EngineProcess`` runs ``server -config APP -data-dir DATA`` as a user would, with
the working directory in the data directory; ``plugin=True`` installs this plugin
under ``DATA/plugins`` first (the engine starts every plugin it finds there, used
or not, so a run of the engine's built-in modules passes ``plugin=False``). It
knows the plugin processes the engine launched (the processes whose working
directory is the installed plugin folder), so their CPU can be read and none is
left behind after a stop.

    async with EngineProcess(bin_dir, app_yaml, data_dir, env={...}) as engine:
        ...  # started: the plugin is loaded and every module and trigger runs
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from ..core.errors import ConfigError, EventbusError
from ..core.lifecycle import Service
from ..core.names import PLUGIN_NAME
from .processes import accepts_connections, terminate

ENV_BIN_DIR = "WORKFLOW_ENGINE_BIN_DIR"
# A source checkout: src/workflow_eventbus/devservers/engine.py -> the repository.
REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "interop" / "build.sh"
_POLL = 0.05
STARTED_LINE = "Registered all post-start services"
LOADED_LINE = f'"{PLUGIN_NAME}" loaded successfully'
REJECTED_LINES = ("Failed to load external plugin", "Failed to register external plugin")


ENGINE_MODULE = "github.com/GoCodeAlone/workflow"
GO_MOD = REPO / "interop" / "go.mod"


class EngineError(EventbusError):
    """The engine did not build, start or stop as expected (the message has the log tail)."""


def pinned_version(go_mod: Path = GO_MOD) -> str:
    """The engine version ``interop/go.mod`` requires ("" when it is not there)."""
    try:
        text = go_mod.read_text()
    except OSError:
        return ""
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(ENGINE_MODULE)}\s+(v\S+)", text, re.M)
    return found.group(1) if found else ""


def build_cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where ``interop/build.sh`` puts the binaries, by the same rules (None: no version)."""
    env = os.environ if environ is None else environ
    version = env.get("WORKFLOW_ENGINE_VERSION", "") or pinned_version()
    if not version:
        return None
    root = env.get("WORKFLOW_INTEROP_CACHE", "")
    if not root:
        cache = env.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
        root = str(Path(cache) / "workflow-eventbus-interop")
    return Path(root) / version


def find_engine(path: str = "", environ: Mapping[str, str] | None = None) -> Path:
    """The directory holding an executable ``server``, without building one: ``path``,
    else ``$WORKFLOW_ENGINE_BIN_DIR``, else the build cache; a ConfigError naming
    ``--engine`` (or the variable) and the fix when there is none."""
    env = os.environ if environ is None else environ
    fix = "run `bash interop/build.sh` (it prints the directory) or pass --engine DIR"
    if path:
        folder, source = Path(path), "--engine"
    elif env.get(ENV_BIN_DIR, ""):
        folder, source = Path(env[ENV_BIN_DIR]), ENV_BIN_DIR
        fix = f"point {ENV_BIN_DIR} at the directory `bash interop/build.sh` prints, or unset it"
    else:
        cached = build_cache_dir(env)
        if cached is None:
            raise ConfigError(
                "--engine", "no engine version to look for (no interop/go.mod here)", fix=fix
            )
        folder, source = cached, "--engine (default: the interop/build.sh cache)"
    server = folder / "server"
    if not (server.is_file() and os.access(server, os.X_OK)):
        raise ConfigError(source, "has no executable cmd/server binary", value=str(server), fix=fix)
    return folder


def last_problem(log: str, limit: int = 300) -> str:
    """The last log line that reports an error (else the last line), shortened."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "level=ERROR" in line or "[ERROR]" in line or "Failed" in line or "error" in line:
            return line[:limit]
    return lines[-1][:limit] if lines else "(its log is empty)"


def engine_binaries() -> Path:
    """The directory with ``server`` and ``wfctl``: ``$WORKFLOW_ENGINE_BIN_DIR`` or a build."""
    configured = os.environ.get(ENV_BIN_DIR, "")
    if configured:
        folder = Path(configured)
    elif BUILD_SCRIPT.is_file():
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise EngineError(
                f"interop/build.sh failed with exit code {done.returncode}:\n{done.stderr[-4000:]}"
            )
        folder = Path(done.stdout.strip().splitlines()[-1])
    else:
        raise ConfigError(
            ENV_BIN_DIR,
            "is unset and there is no interop/build.sh to build the engine with",
            fix=f"set {ENV_BIN_DIR} to a directory holding the engine's server and wfctl",
        )
    for name in ("server", "wfctl"):
        if not os.access(folder / name, os.X_OK):
            raise EngineError(f"{folder / name} is missing or not executable")
    return folder


def install_plugin(plugins_dir: Path) -> Path:
    """Install the plugin with its own console command; returns its directory."""
    command = shutil.which(PLUGIN_NAME, path=str(Path(sys.executable).parent))
    argv = [command] if command else [sys.executable, "-m", "workflow_eventbus.cli.main"]
    subprocess.run(
        [*argv, "install", "--plugins-dir", str(plugins_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    folder = plugins_dir / PLUGIN_NAME
    for name in (PLUGIN_NAME, "plugin.json", "plugin.contracts.json"):
        if not (folder / name).is_file():
            raise EngineError(f"install did not create {folder / name}")
    return folder


def proc_state(pid: int) -> str | None:
    """The one-letter state of a live process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces; the state follows its ')'.
    return stat[stat.rindex(")") + 2]


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state not in ("Z", "X")


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is ``folder`` (the engine starts
    each plugin in its own directory)."""
    target = str(folder.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == target and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


async def poll_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` until it holds; ``check`` may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise EngineError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(_POLL)


class EngineProcess(Service):
    """One ``cmd/server`` process running an app config; ``start`` may be called again
    after ``stop`` (same data directory, plugin already installed)."""

    def __init__(
        self,
        bin_dir: Path,
        config: Path,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        plugin: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        self.bin_dir = bin_dir
        self.config = config
        self.data_dir = data_dir
        self.plugin = plugin
        self.plugin_dir = data_dir / "plugins" / PLUGIN_NAME
        self.log_path = data_dir / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.plugin_pids: list[int] = []
        self._log_offset = 0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise EngineError("the engine was not started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        """The log written since the last ``start``."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def start(self) -> None:
        """Start the engine and wait until every module and trigger has started."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "plugins").mkdir(exist_ok=True)
        if self.plugin and not self.plugin_dir.is_dir():
            await asyncio.to_thread(install_plugin, self.data_dir / "plugins")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.bin_dir / "server"),
                "-config",
                str(self.config),
                "-data-dir",
                str(self.data_dir),
                cwd=self.data_dir,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        if self.plugin:
            await poll_until(
                lambda: LOADED_LINE in self.log(),
                timeout=self.start_timeout,
                what="the engine to load the plugin",
                check=self._check_not_rejected,
            )
        await poll_until(
            lambda: STARTED_LINE in self.log(),
            timeout=self.start_timeout,
            what="the engine to finish starting",
            check=self._check_not_rejected,
        )
        self.plugin_pids = processes_in(self.plugin_dir) if self.plugin else []
        if self.plugin and not self.plugin_pids:
            raise EngineError("the engine loaded the plugin but no plugin process was found")

    def _check_not_rejected(self) -> None:
        text = self.log()
        for marker in REJECTED_LINES:
            if marker in text:
                raise EngineError(f"{marker}; engine log tail:\n{self.log_tail()}")
        if self.proc is not None and self.proc.returncode is not None:
            raise EngineError(
                f"the engine exited with code {self.proc.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def check_running(self, doing: str = "finish") -> None:
        """Raise EngineError, with the log's last problem, if the engine has exited
        (a ``check`` for :func:`poll_until` while it works)."""
        if self.proc is None:
            raise EngineError("cmd/server was not started")
        if self.proc.returncode is not None:
            raise EngineError(
                f"cmd/server exited with code {self.proc.returncode} before it could "
                f"{doing}: {last_problem(self.log())}"
            )
        for marker in REJECTED_LINES:
            if marker in self.log():
                raise EngineError(f"cmd/server: {marker}: {last_problem(self.log())}")

    async def wait_listening(self, port: int) -> None:
        """Until something accepts TCP connections on 127.0.0.1:``port``."""

        await poll_until(
            lambda: accepts_connections(port),
            timeout=self.start_timeout,
            what=f"cmd/server to listen on port {port}",
            check=lambda: self.check_running(f"listen on port {port}"),
        )

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the engine, wait for it (SIGKILL after ``timeout``), then for its
        plugin processes; returns the engine's exit code (None if never started)."""
        proc = self.proc
        if proc is None:
            return None
        await terminate(proc, timeout)
        leftovers = set(self.plugin_pids)
        if self.plugin:
            leftovers |= set(processes_in(self.plugin_dir))
        with contextlib.suppress(EngineError):
            await poll_until(
                lambda: not any(alive(pid) for pid in leftovers),
                timeout=10.0,
                what="the plugin processes to exit",
            )
        for pid in leftovers:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None
        return proc.returncode

    async def teardown(self) -> None:
        await self.stop()
