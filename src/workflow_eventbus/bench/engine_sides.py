"""What consumes in an engine bench row: cmd/server replicas, or a FastStream process.

Each side can be stopped and started again (the loss rows do), and says which
processes are its own, by role, so their CPU can be read from ``/proc``.
"""

from __future__ import annotations

import abc
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

from ..core.lifecycle import Service
from ..devservers.engine import EngineError, EngineProcess, poll_until
from ..devservers.processes import accepts_connections, terminate


class Side(Service):
    name: str

    @abc.abstractmethod
    def roles(self) -> dict[str, list[int]]:
        """Process ids by role ("engine", "plugin", "faststream")."""

    async def teardown(self) -> None:
        await self.stop()

    @abc.abstractmethod
    async def stop(self) -> None: ...


class EngineSide(Side):
    """``replicas`` cmd/server processes running one app config, each in its own data dir."""

    def __init__(
        self,
        name: str,
        bin_dir: Path,
        app_yaml: str,
        workdir: Path,
        env: Mapping[str, str],
        *,
        plugin: bool,
        replicas: int = 1,
    ) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "app.yaml"
        config.write_text(app_yaml)
        self.engines = [
            EngineProcess(bin_dir, config, workdir / f"replica-{index}", env, plugin=plugin)
            for index in range(replicas)
        ]

    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()

    async def stop(self) -> None:
        for engine in self.engines:
            await engine.stop()

    def roles(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {"engine": [e.pid for e in self.engines if e.running]}
        plugin = [pid for e in self.engines for pid in e.plugin_pids]
        if plugin:
            roles["plugin"] = plugin
        return roles

    def log_lines(self) -> int:
        return sum(e.log().count("\n") for e in self.engines)


class FastStreamSide(Side):
    """``python -m workflow_eventbus.bench.faststream_service`` with a durable consumer."""

    def __init__(
        self, name: str, url: str, durable: str, *, workers: int, workdir: Path, loop: str
    ) -> None:
        self.name = name
        self.url = url
        self.durable = durable
        self.workers = workers
        self.loop = loop
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = workdir / f"{durable}.ready"
        self.log_path = workdir / f"{durable}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            return
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "workflow_eventbus.bench.faststream_service",
                "--url",
                self.url,
                "--durable",
                self.durable,
                "--workers",
                str(self.workers),
                "--ready-file",
                str(self.ready_file),
                "--loop",
                self.loop,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        await poll_until(
            self.ready_file.exists,
            timeout=60.0,
            what="the FastStream service to start",
            check=self._check_running,
        )

    def _check_running(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-30:]
            raise EngineError(
                f"the FastStream service exited with code {self.proc.returncode} "
                f"(is faststream[nats] installed? pip install -e '.[dev]'); log:\n"
                + "\n".join(tail)
            )

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        await terminate(proc, 20.0)
        self.proc = None

    def roles(self) -> dict[str, list[int]]:
        alive = self.proc is not None and self.proc.returncode is None
        return {"faststream": [self.proc.pid] if alive and self.proc else []}


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (binding it would succeed)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_port(port: int, timeout: float = 30.0) -> None:
    await poll_until(
        lambda: accepts_connections(port), timeout=timeout, what=f"a listener on port {port}"
    )
