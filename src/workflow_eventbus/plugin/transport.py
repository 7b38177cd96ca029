"""The go-plugin server side, as the workflow engine launches external plugins.

Order of events (reference plugin-protocol.md §1.5, §2, §8):

1. the magic cookie ``WORKFLOW_PLUGIN=workflow-external-plugin-v1`` must be in
   the environment, otherwise a person ran us: explain on stderr, exit 1;
2. SIGINT is ignored (a terminal Ctrl-C reaches the whole process group and the
   host wants to stop modules itself), SIGTERM stops gracefully;
3. a grpc.aio server with no receive limit serves PluginService, GRPCBroker,
   GRPCController, GRPCStdio and health (``plugin`` and ``""``: SERVING unless a
   started broker has lost its connection, see health.py) on a unix socket in a
   private 0700 directory; records meant for the engine also go to its Log
   callback once ConfigureCallback connected it (engine_log.py);
4. only then the handshake line ``1|1|unix|<path>|grpc`` goes to stdout,
   flushed; afterwards fd 1 points at stderr so a stray print cannot block us;
5. serve until Shutdown, SIGTERM or the death of the parent process, then drain
   the triggers (each for its ``drain_timeout``), stop the modules, stop the
   server and remove the socket directory.

How long stopping may take (docs/guarantees.md, "Stopping"): go-plugin's Kill
closes its broker, calls Shutdown and waits for the answer with no deadline of
its own, then SIGKILLs 2 s after it. So Shutdown is answered once the triggers
have drained, and the modules stop inside those 2 s. A Shutdown call that does
carry a deadline is answered before it (the drains are cut to fit). SIGTERM
comes from whoever runs the process; its deadline is theirs to set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from .._proto import grpc_broker_pb2_grpc as bgrpc
from .._proto import grpc_controller_pb2_grpc as cgrpc
from .._proto import grpc_stdio_pb2_grpc as sgrpc
from .._proto import plugin_pb2_grpc as pgrpc
from ..core.errors import ConfigError
from .broker import BrokerServicer, ConnInfoStore, ControllerServicer, StdioServicer
from .callbacks.client import CallbackClient
from .engine_log import EngineLogHandler
from .health import BusHealth
from .iac import service as iac_service

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

log = logging.getLogger("workflow_eventbus.plugin")

COOKIE_KEY = "WORKFLOW_PLUGIN"
COOKIE_VALUE = "workflow-external-plugin-v1"
CORE_PROTOCOL = 1
APP_PROTOCOL = 1
SOCKET_NAME = "plugin.sock"
MAX_SOCKET_PATH = 100  # sun_path is 104-108 bytes depending on the OS
WATCHDOG_PERIOD = 0.25
LOOP_ENV = "WORKFLOW_EVENTBUS_LOOP"
# Seconds for stopping the modules once the triggers have drained: go-plugin
# SIGKILLs the process 2 s after Shutdown's answer.
SHUTDOWN_BUDGET = 1.2
# Kept back from a deadline on Shutdown, for the answer to reach the host.
ANSWER_MARGIN = 0.5

NOT_A_PLUGIN = f"""\
This is workflow-plugin-eventbus, an external plugin of the GoCodeAlone workflow engine.
The engine starts it itself (with {COOKIE_KEY}={COOKIE_VALUE} in the environment); it is not meant to
be run by hand without a subcommand. Try:

  workflow-plugin-eventbus --help
  workflow-plugin-eventbus demo                     # end-to-end demo on an embedded NATS
  workflow-plugin-eventbus install --plugins-dir DIR
"""


def cookie_ok(environ: Mapping[str, str]) -> bool:
    return environ.get(COOKIE_KEY, "") == COOKIE_VALUE


def negotiate_version(environ: Mapping[str, str]) -> int:
    """The highest app protocol both sides speak (we speak only 1)."""
    offered = environ.get("PLUGIN_PROTOCOL_VERSIONS", "")
    versions = {int(v) for v in offered.split(",") if v.strip().isdigit()}
    if versions and APP_PROTOCOL not in versions:
        raise ConfigError(
            "PLUGIN_PROTOCOL_VERSIONS",
            f"the host does not offer protocol version {APP_PROTOCOL}",
            value=offered,
            fix="use a workflow engine that speaks external plugin protocol 1",
        )
    return APP_PROTOCOL


def socket_dir(environ: Mapping[str, str]) -> Path:
    """A fresh private directory for the socket (``$PLUGIN_UNIX_SOCKET_DIR`` first)."""
    base = environ.get("PLUGIN_UNIX_SOCKET_DIR") or None
    path = Path(tempfile.mkdtemp(prefix="wfeb-", dir=base))
    if len(str(path / SOCKET_NAME)) > MAX_SOCKET_PATH:
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="wfeb-", dir="/tmp"))
    return path  # mkdtemp creates it 0700


def _apply_socket_group(path: Path, environ: Mapping[str, str]) -> None:
    group = environ.get("PLUGIN_UNIX_SOCKET_GROUP", "")
    if not group:
        os.chmod(path, 0o600)
        return
    shutil.chown(path, group=group)
    shutil.chown(path.parent, group=group)
    os.chmod(path, 0o660)
    os.chmod(path.parent, 0o750)


def handshake_line(path: Path, version: int = APP_PROTOCOL) -> str:
    return f"{CORE_PROTOCOL}|{version}|unix|{path}|grpc\n"


class _PipeSafeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain ``[LEVEL] logger: message`` lines; a closed stderr is ignored."""

    LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}

    def format(self, record: logging.LogRecord) -> str:
        level = self.LEVELS.get(record.levelname, record.levelname)
        return f"[{level}] {record.name}: {super().format(record)}"

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        return None  # BrokenPipeError after the host died: nothing useful to do


def setup_logging(environ: Mapping[str, str]) -> None:
    handler = _PipeSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = environ.get("WORKFLOW_EVENTBUS_LOG_LEVEL", "INFO").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    logging.getLogger("grpc").setLevel(logging.WARNING)


class PluginProcess:
    """Runs the plugin server until it is told to stop; one per process."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.stopping = asyncio.Event()
        self.drained = asyncio.Event()  # every trigger drained: Shutdown may answer
        self.stop_deadline: float | None = None  # monotonic; a deadline on Shutdown
        self.reason = ""
        self.store = ConnInfoStore()
        self.callbacks = CallbackClient(self.store)
        # Taken before the handshake: a host that dies right after reading it
        # must still be noticed (afterwards getppid() already names the new parent).
        self.parent_pid = os.getppid()

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.reason = reason
            log.info("stopping: %s", reason)
            self.stopping.set()

    async def run(self) -> int:
        from .servicer import PluginService  # the library is imported only to serve

        version = negotiate_version(self.environ)
        if self.environ.get("PLUGIN_CLIENT_CERT"):
            log.warning("PLUGIN_CLIENT_CERT is set but AutoMTLS is not supported; serving plain")
        service = PluginService(self.callbacks)
        health = BusHealth(service.bus)
        engine_log = EngineLogHandler.install(self.callbacks)
        server = grpc.aio.server(options=UNLIMITED)
        self._register(server, service, health)
        directory = socket_dir(self.environ)
        path = directory / SOCKET_NAME
        try:
            server.add_insecure_port(f"unix:{path}")
            await server.start()
            _apply_socket_group(path, self.environ)
            _write_handshake(handshake_line(path, version))
            await self._serve(service, server)
        finally:
            engine_log.uninstall()
            health.close()
            shutil.rmtree(directory, ignore_errors=True)
        return 0

    def _register(
        self, server: grpc.aio.Server, service: pgrpc.PluginServiceServicer, health: BusHealth
    ) -> None:
        pgrpc.add_PluginServiceServicer_to_server(service, server)
        bgrpc.add_GRPCBrokerServicer_to_server(BrokerServicer(self.store, self.stopping), server)
        cgrpc.add_GRPCControllerServicer_to_server(
            ControllerServicer(self.shutdown_requested), server
        )
        sgrpc.add_GRPCStdioServicer_to_server(StdioServicer(self.stopping), server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        iac_service.register(server)

    async def _serve(self, service: object, server: grpc.aio.Server) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        watchdog = asyncio.create_task(self._watch_parent(), name="parent-watchdog")
        try:
            await self.stopping.wait()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            loop.remove_signal_handler(signal.SIGTERM)
            await self._shut_down(service)
            await server.stop(0.3)

    async def _shut_down(self, service: object) -> None:
        """Drain the triggers (Shutdown waits for that), then stop the modules."""
        budget = None
        if self.stop_deadline is not None:
            budget = max(self.stop_deadline - time.monotonic() - ANSWER_MARGIN, 0.0)
        try:
            drain = getattr(service, "drain_triggers", None)
            if drain is not None:
                await drain(budget)
        finally:
            self.drained.set()
        aclose = getattr(service, "aclose", None)
        if aclose is not None:
            await aclose(SHUTDOWN_BUDGET)

    async def shutdown_requested(self, remaining: float | None) -> None:
        """GRPCController.Shutdown: stop, and return once every trigger has drained
        (within ``remaining`` seconds when the host set a deadline)."""
        if remaining is not None and self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + remaining
        self.request_stop("GRPCController.Shutdown")
        await self.drained.wait()

    async def _watch_parent(self) -> None:
        """cmd/server never kills its plugins: exit when our parent goes away."""
        parent = self.parent_pid
        while True:
            if os.getppid() != parent:
                self.request_stop(f"parent process {parent} exited")
                return
            await asyncio.sleep(WATCHDOG_PERIOD)


def _write_handshake(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # later prints land in the log
    sys.stdout = sys.stderr


def run_loop(main: Coroutine[Any, Any, int], environ: Mapping[str, str]) -> int:
    """Run on uvloop when it is installed (``WORKFLOW_EVENTBUS_LOOP=asyncio`` opts out).

    Measured with ``workflow-plugin-eventbus bench`` (plugin process only): consume
    batch 100 + ack 0.66-0.69 -> 0.82-0.85 of raw nats-py, trigger max_in_flight 16
    2.8 -> 3.1-3.5x the sequential rate; the other rows unchanged within noise."""
    if environ.get(LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def serve(environ: Mapping[str, str] | None = None) -> int:
    """Entry point when the engine launches us. Returns the exit status."""
    env = dict(os.environ if environ is None else environ)
    if not cookie_ok(env):
        sys.stderr.write(NOT_A_PLUGIN)
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(env)
    try:
        return run_loop(PluginProcess(env).run(), env)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
