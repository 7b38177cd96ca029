"""Run the real workflow engine (``cmd/server``) with one app config: for the demo.

:func:`find_engine` picks the directory holding the ``server`` binary: the one
given, else ``$WORKFLOW_ENGINE_BIN_DIR``, else the cache directory
``interop/build.sh`` builds into for the engine version pinned in
``interop/go.mod``. :class:`EngineApp` runs ``server -config APP -data-dir DATA``
in a session of its own (a terminal Ctrl-C does not reach it; its owner stops it),
waits from its log until the plugin is loaded and every module and trigger has
started, and on stop sends SIGTERM, waits for the engine, then for the plugin
processes it launched (those whose working directory is the plugin's installed
directory), killing whatever outlives the grace period.

The plugin must already be installed under ``DATA/plugins`` (the ``install``
command's layout); this layer cannot call the command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..core.errors import ConfigError, EventbusError
from ..core.lifecycle import Service
from ..core.names import PLUGIN_NAME

ENV_BIN_DIR = "WORKFLOW_ENGINE_BIN_DIR"
ENGINE_MODULE = "github.com/GoCodeAlone/workflow"
# A source checkout: src/workflow_eventbus/devservers/engine_app.py -> the repository.
_GO_MOD = Path(__file__).resolve().parents[3] / "interop" / "go.mod"
_POLL = 0.05
_LOADED = f'"{PLUGIN_NAME}" loaded successfully'
# cmd/server logs this from its post-start hooks, which run once engine.Start has
# started every module and the plugin's triggers.
_STARTED = "Registered all post-start services"
_REJECTED = ("Failed to load external plugin", "Failed to register external plugin")


class EngineError(EventbusError):
    """The engine did not start, or did not stop, as asked."""


def pinned_version(go_mod: Path = _GO_MOD) -> str:
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
    """The directory holding an executable ``server``; ConfigError naming ``--engine``."""
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


class EngineApp(Service):
    """One ``cmd/server`` process running ``config`` with ``data_dir`` as its data directory."""

    def __init__(
        self,
        bin_dir: Path,
        config: Path,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.bin_dir = bin_dir
        self.config = config
        self.data_dir = data_dir
        self.plugin_dir = data_dir / "plugins" / PLUGIN_NAME
        self.log_file = data_dir / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.plugin_pids: list[int] = []
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> None:
        """Start the engine and wait until its modules and triggers have started."""
        if not (self.plugin_dir / PLUGIN_NAME).is_file():
            raise ConfigError(
                "plugins dir",
                "has no installed plugin",
                value=str(self.plugin_dir),
                fix="run `workflow-plugin-eventbus install --plugins-dir DATA/plugins` first",
            )
        with self.log_file.open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.bin_dir / "server"),
                "-config",
                str(self.config),
                "-data-dir",
                str(self.data_dir),
                cwd=self.data_dir,  # no .wfctl.yaml of some parent directory is picked up
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
        await self._wait(lambda: _LOADED in self.log(), deadline, "load the plugin")
        self.plugin_pids = processes_in(self.plugin_dir)
        await self._wait(lambda: _STARTED in self.log(), deadline, "start its modules")

    async def wait_listening(self, port: int) -> None:
        """Until something accepts TCP connections on 127.0.0.1:``port``."""

        async def accepts() -> bool:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

        deadline = time.monotonic() + self.ready_timeout
        while not await accepts():
            self.check_running(f"listen on port {port}")
            if time.monotonic() > deadline:
                raise EngineError(f"cmd/server did not listen on port {port} in time")
            await asyncio.sleep(_POLL)

    def check_running(self, doing: str = "finish") -> None:
        """Raise EngineError (with the log's last problem) if the engine has exited."""
        if self._proc is None:
            raise EngineError("cmd/server was not started")
        if self._proc.returncode is not None:
            raise EngineError(
                f"cmd/server exited with code {self._proc.returncode} before it could "
                f"{doing}: {last_problem(self.log())}"
            )
        log = self.log()
        for marker in _REJECTED:
            if marker in log:
                raise EngineError(f"cmd/server: {marker}: {last_problem(log)}")

    async def _wait(self, ready: Callable[[], bool], deadline: float, doing: str) -> None:
        while not ready():
            self.check_running(doing)
            if time.monotonic() > deadline:
                raise EngineError(
                    f"cmd/server did not {doing} within {self.ready_timeout:.0f}s: "
                    f"{last_problem(self.log())}"
                )
            await asyncio.sleep(_POLL)

    async def teardown(self) -> None:
        await self.stop()

    async def stop(self) -> int | None:
        """SIGTERM the engine and wait for it and its plugin processes; returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        leftovers = set(self.plugin_pids) | set(processes_in(self.plugin_dir))
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if not any(alive(pid) for pid in leftovers):
                break
            await asyncio.sleep(_POLL)
        for pid in leftovers:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._proc = None
        return proc.returncode


def last_problem(log: str, limit: int = 300) -> str:
    """The last log line that reports an error (else the last line), shortened."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "level=ERROR" in line or "[ERROR]" in line or "Failed" in line or "error" in line:
            return line[:limit]
    return lines[-1][:limit] if lines else "(its log is empty)"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 2 (the command) may hold spaces; the state letter follows its ")".
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is ``folder`` (cmd/server starts each
    plugin in its own directory)."""
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
