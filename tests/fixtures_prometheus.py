"""A real Prometheus server scraping given targets every second (``prometheus`` fixture).

``/usr/bin/prometheus`` comes from the Debian package (scripts/setup.sh installs
it; ``PROMETHEUS_BIN`` points elsewhere). Each server gets a random loopback port,
a temporary storage directory and a config naming its targets; it is ready when
``/-/ready`` answers 200, and is stopped and removed when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest_asyncio

from workflow_eventbus.core.errors import BrokerUnavailableError, ConfigError
from workflow_eventbus.core.lifecycle import Service

BIN_ENV = "PROMETHEUS_BIN"
READY_TIMEOUT = 30.0
PORT_TRIES = 3


def prometheus_binary() -> str:
    path = os.environ.get(BIN_ENV) or "/usr/bin/prometheus"
    if not os.access(path, os.X_OK):
        raise ConfigError(
            BIN_ENV,
            "names no executable Prometheus server",
            value=path,
            fix="run scripts/setup.sh as root (installs the Debian package prometheus) "
            f"or set {BIN_ENV}",
        )
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class PrometheusServer(Service):
    def __init__(self, targets: Sequence[str], *, job: str = "eventbus") -> None:
        self.targets = list(targets)
        self.job = job
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None
        self._dir: Path | None = None

    async def start(self) -> None:
        binary = prometheus_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="eventbus-prom-"))
        config = self._dir / "prometheus.yml"
        # JSON is YAML: one scrape job, every second, over the targets given.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        for _ in range(PORT_TRIES):  # another process may take the port between probe and bind
            port = _free_port()
            log = self._dir / f"prometheus-{port}.log"
            with log.open("wb") as out:
                self.process = await asyncio.create_subprocess_exec(
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            self.url = f"http://127.0.0.1:{port}"
            if await self._ready(log):
                return
        raise BrokerUnavailableError(f"prometheus: no free port after {PORT_TRIES} tries")

    async def _ready(self, log: Path) -> bool:
        """True once /-/ready answers; False when the port was taken; else an error."""
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                text = log.read_text(errors="replace")
                if "address already in use" in text:
                    return False
                raise BrokerUnavailableError(f"prometheus exited: {text[-2000:]}")
            try:
                status, _ = await asyncio.to_thread(_get, f"{self.url}/-/ready")
            except OSError:
                status = 0
            if status == 200:
                return True
            with contextlib.suppress(TimeoutError):  # the pause between polls, or its exit
                await asyncio.wait_for(self.process.wait(), 0.05)
        raise BrokerUnavailableError(f"prometheus not ready within {READY_TIMEOUT}s at {self.url}")

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """``/api/v1/query``: the instant vector's elements (``metric``, ``value``)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        status, body = await asyncio.to_thread(_get, url)
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    async def targets_up(self) -> list[dict[str, Any]]:
        status, body = await asyncio.to_thread(_get, f"{self.url}/api/v1/targets")
        assert status == 200, body
        active: list[dict[str, Any]] = json.loads(body)["data"]["activeTargets"]
        return active

    async def teardown(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


StartPrometheus = Callable[[Sequence[str]], Awaitable[PrometheusServer]]


@pytest_asyncio.fixture(loop_scope="session")
async def prometheus() -> AsyncIterator[StartPrometheus]:
    """``await prometheus(["127.0.0.1:9464"])``: a server scraping those targets every
    second, stopped when the test ends."""
    started: list[PrometheusServer] = []

    async def start(targets: Sequence[str]) -> PrometheusServer:
        server = PrometheusServer(targets)
        started.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in reversed(started):
            await server.teardown()
