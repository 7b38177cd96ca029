"""An engine stand-in: launches the plugin process the way the workflow engine does.

    async with PluginHost(on_trigger=handler) as host:
        handle = await host.create_module("eventbus.broker", "bus", typed=pb.ClusterConfig(...))
        await host.init_module(handle); await host.start_module(handle)

What it reproduces (reference plugin-protocol.md §1.5, §2.9, §3.2):

* environment: the parent's, plus ``WORKFLOW_PLUGIN=workflow-external-plugin-v1``,
  ``PLUGIN_MIN_PORT=10000``, ``PLUGIN_MAX_PORT=25000``, ``PLUGIN_PROTOCOL_VERSIONS=1``;
  no arguments; stdout and stderr are pipes;
* the first stdout line is the handshake; later stdout is drained and dropped;
* it opens ``GRPCStdio/StreamStdio`` and ``GRPCBroker/StartStream``, serves
  EngineCallbackService on a unix socket of its own and announces it on the
  broker stream as service id 1, then runs the load-time RPCs including
  ``ConfigureCallback{broker_id=1}``;
* ``shutdown()`` is go-plugin's Kill: close the broker stream (the engine's
  callback server then refuses new TriggerWorkflow calls and lets running ones
  finish), call ``GRPCController/Shutdown`` and wait for its answer with no
  deadline (until the process exits), wait 2 s more, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..._proto import grpc_broker_pb2 as bpb
from ..._proto import grpc_broker_pb2_grpc as bgrpc
from ..._proto import grpc_controller_pb2 as cpb
from ..._proto import grpc_controller_pb2_grpc as cgrpc
from ..._proto import grpc_stdio_pb2_grpc as sgrpc
from ..._proto import plugin_pb2 as ppb
from ..._proto import plugin_pb2_grpc as pgrpc
from ...core.errors import BrokerUnavailableError, ProviderError
from ...core.lifecycle import Service
from ...plugin.transport import UNLIMITED
from .callback_server import CallbackServer, TriggerCall

HANDSHAKE_TIMEOUT = 60.0
KILL_GRACE = 2.0
CALLBACK_BROKER_ID = 1
TriggerHandler = Callable[[TriggerCall], Awaitable[str]]


def plugin_command() -> list[str]:
    """How to run the plugin from this environment (no arguments, like the engine)."""
    return [sys.executable, "-m", "workflow_eventbus.cli.main"]


def engine_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        WORKFLOW_PLUGIN="workflow-external-plugin-v1",
        PLUGIN_MIN_PORT="10000",
        PLUGIN_MAX_PORT="25000",
        PLUGIN_PROTOCOL_VERSIONS="1",
    )
    return env


class PluginError(ProviderError):
    """The plugin answered an RPC with an in-band error."""


class PluginHost(Service):
    """One plugin process and the engine side of its connections."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        on_trigger: TriggerHandler | None = None,
        announce_callback: bool = True,
        load: bool = True,
        echo_stderr: bool = False,
    ) -> None:
        self.command = list(command or plugin_command())
        self.env = engine_environment(env)
        self.cwd = str(cwd) if cwd else None
        self.callback_server = CallbackServer(on_trigger)
        self.announce_callback = announce_callback
        self.load = load
        self.echo_stderr = echo_stderr
        self.handshake = ""
        self.socket_path = ""
        self.stderr_lines: deque[str] = deque(maxlen=500)
        self.process: asyncio.subprocess.Process | None = None
        self.channel: grpc.aio.Channel | None = None
        self.plugin: pgrpc.PluginServiceAsyncStub | None = None
        self._broker_queue: asyncio.Queue[bpb.ConnInfo | None] = asyncio.Queue()
        self._streams: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._callback_dir: Path | None = None
        # How the last Shutdown ended: "answered", "exited" (before answering) or
        # the gRPC status name (e.g. "DEADLINE_EXCEEDED").
        self.shutdown_outcome = ""

    # --- process ----------------------------------------------------------------

    async def teardown(self) -> None:
        await self.shutdown()

    @property
    def pid(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.pid

    async def start(self) -> None:
        self._callback_dir = Path(tempfile.mkdtemp(prefix="wfeb-host-"))
        callback_path = str(self._callback_dir / "callback.sock")
        await self.callback_server.start(callback_path)
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._spawn(self._pump_stderr())
        self.handshake = await self._read_handshake()
        self.socket_path = parse_handshake(self.handshake)
        self._spawn(self._drain_stdout())
        self.channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}", options=UNLIMITED)
        self.plugin = pgrpc.PluginServiceStub(self.channel)
        self._open_streams()
        if self.announce_callback:
            self.send_conninfo()
        if self.load:
            await self.load_sequence()

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _read_handshake(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), HANDSHAKE_TIMEOUT)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                "plugin: timeout while waiting for plugin to start"
            ) from exc
        if not line:
            await self.process.wait()
            tail = "\n".join(self.stderr_lines)
            raise BrokerUnavailableError(
                f"plugin exited before we could connect (status {self.process.returncode}): {tail}"
            )
        return line.decode().strip()

    async def _pump_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stderr_lines.append(line)
            if self.echo_stderr and line:
                print(f"plugin: {line}", file=sys.stderr)

    async def _drain_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for _ in self.process.stdout:
            pass  # the host discards stdout after the handshake

    def _open_streams(self) -> None:
        assert self.channel is not None
        stdio = sgrpc.GRPCStdioStub(self.channel).StreamStdio(empty_pb2.Empty())
        broker = bgrpc.GRPCBrokerStub(self.channel).StartStream(self._broker_requests())
        self._streams = [stdio, broker]
        self._spawn(_consume(stdio))
        self._spawn(_consume(broker))

    async def _broker_requests(self) -> AsyncIterator[bpb.ConnInfo]:
        while (info := await self._broker_queue.get()) is not None:
            yield info

    def send_conninfo(self, service_id: int = CALLBACK_BROKER_ID) -> None:
        """Announce the callback server on the broker stream (the engine's Accept)."""
        self._broker_queue.put_nowait(
            bpb.ConnInfo(
                service_id=service_id, network="unix", address=self.callback_server.address
            )
        )

    async def load_sequence(self) -> None:
        """The engine's load-time RPCs, in its order."""
        await self.call("GetManifest", empty_pb2.Empty())
        triggers = await self.call("GetTriggerTypes", empty_pb2.Empty())
        if triggers.types:
            await self.configure_callback(CALLBACK_BROKER_ID)
        await self.call("GetContractRegistry", empty_pb2.Empty())
        await self.call("GetConfigFragment", empty_pb2.Empty())

    # --- RPC helpers --------------------------------------------------------------

    async def call(self, method: str, request: Message) -> Any:
        assert self.plugin is not None, "start() first"
        return await getattr(self.plugin, method)(request)

    async def manifest(self) -> ppb.Manifest:
        result: ppb.Manifest = await self.call("GetManifest", empty_pb2.Empty())
        return result

    async def types(self) -> dict[str, list[str]]:
        out = {}
        for kind in ("Module", "Step", "Trigger"):
            answer = await self.call(f"Get{kind}Types", empty_pb2.Empty())
            out[kind.lower()] = list(answer.types)
        return out

    async def registry(self) -> ppb.ContractRegistry:
        result: ppb.ContractRegistry = await self.call("GetContractRegistry", empty_pb2.Empty())
        return result

    async def health(self, service: str = "plugin") -> str:
        """``grpc.health.v1.Health/Check`` as go-plugin's Ping asks it: the status
        name (``SERVING``, ``NOT_SERVING``); an RPC error raises."""
        assert self.channel is not None, "start() first"
        answer = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    async def configure_callback(self, broker_id: int = CALLBACK_BROKER_ID) -> None:
        answer = await self.call(
            "ConfigureCallback", ppb.ConfigureCallbackRequest(broker_id=broker_id)
        )
        _check(answer.error, "ConfigureCallback")

    async def create_module(
        self,
        type_name: str,
        name: str,
        config: Mapping[str, Any] | None = None,
        *,
        typed: Message | None = None,
    ) -> str:
        request = ppb.CreateModuleRequest(type=type_name, name=name)
        return await self._create("CreateModule", request, config, typed)

    async def _module_op(self, op: str, handle: str) -> None:
        answer = await self.call(op, ppb.HandleRequest(handle_id=handle))
        _check(answer.error, op)

    async def init_module(self, handle: str) -> None:
        await self._module_op("InitModule", handle)

    async def start_module(self, handle: str) -> None:
        await self._module_op("StartModule", handle)

    async def stop_module(self, handle: str) -> None:
        await self._module_op("StopModule", handle)

    async def destroy_module(self, handle: str) -> None:
        await self._module_op("DestroyModule", handle)

    async def create_step(
        self,
        type_name: str,
        name: str,
        config: Mapping[str, Any] | None = None,
        *,
        typed: Message | None = None,
    ) -> str:
        request = ppb.CreateStepRequest(type=type_name, name=name)
        return await self._create("CreateStep", request, config, typed)

    async def _create(
        self,
        method: str,
        request: ppb.CreateModuleRequest | ppb.CreateStepRequest,
        config: Mapping[str, Any] | None,
        typed: Message | None,
    ) -> str:
        """CreateModule/CreateStep with the config as a Struct and/or typed; the handle."""
        if typed is not None:
            request.typed_config.Pack(typed)
        if config is not None:
            json_format.ParseDict(dict(config), request.config)
        answer = await self.call(method, request)
        _check(answer.error, f"{method} {request.type} {request.name!r}")
        return str(answer.handle_id)

    async def execute_step(
        self,
        handle: str,
        typed_input: Message | None = None,
        *,
        typed_config: Message | None = None,
    ) -> ppb.ExecuteStepResponse:
        """The raw response (``.error`` in-band, ``.typed_output`` an Any)."""
        request = ppb.ExecuteStepRequest(handle_id=handle)
        if typed_input is not None:
            request.typed_input.Pack(typed_input)
        if typed_config is not None:
            request.typed_config.Pack(typed_config)
        result: ppb.ExecuteStepResponse = await self.call("ExecuteStep", request)
        return result

    async def run_step(
        self, handle: str, typed_input: Message | None, output: type[Message]
    ) -> Any:
        """ExecuteStep, raising PluginError on an in-band error; returns the typed output."""
        answer = await self.execute_step(handle, typed_input)
        _check(answer.error, "ExecuteStep")
        result = output()
        answer.typed_output.Unpack(result)
        return result

    async def create_trigger(
        self, type_name: str, workflow_type: str, config: Mapping[str, Any]
    ) -> str:
        request = ppb.CreateTriggerRequest(type=type_name, name=workflow_type)
        json_format.ParseDict(dict(config), request.config)
        answer = await self.call("CreateTrigger", request)
        _check(answer.error, f"CreateTrigger {type_name}")
        return str(answer.handle_id)

    # --- ending ---------------------------------------------------------------------

    async def shutdown(self, grace: float = KILL_GRACE, *, deadline: float | None = None) -> float:
        """go-plugin's Kill: close the broker, Shutdown, wait ``grace`` s, then SIGKILL.

        Shutdown is awaited until it answers or the process exits, as go-plugin
        does; ``deadline`` sets a gRPC deadline on it instead (a stricter host).
        Returns how long the process took to exit after Shutdown answered. Before
        the handshake (no channel yet) there is no one to ask: it is killed."""
        if self.channel is None:
            await self.kill()
            return 0.0
        began = time.monotonic()
        if self.process is not None and self.process.returncode is None:
            self._broker_queue.put_nowait(None)
            self.callback_server.handler = _refuse_after_broker_close
            await self._ask_to_shut_down(self.process, deadline)
            began = time.monotonic()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        took = time.monotonic() - began
        await self._close()
        return took

    async def _ask_to_shut_down(
        self, process: asyncio.subprocess.Process, deadline: float | None
    ) -> None:
        """Shutdown, until it answers (or fails) or the process exits."""
        answer = asyncio.ensure_future(self._controller().Shutdown(cpb.Empty(), timeout=deadline))
        exited = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait({answer, exited}, return_when=asyncio.FIRST_COMPLETED)
            self.shutdown_outcome = _outcome(answer) if answer.done() else "exited"
        finally:
            for task in (answer, exited):
                task.cancel()
            for task in (answer, exited):
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await task

    def _controller(self) -> cgrpc.GRPCControllerAsyncStub:
        assert self.channel is not None
        return cgrpc.GRPCControllerStub(self.channel)

    async def kill(self) -> None:
        """SIGKILL without asking (a crashed or impatient host)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await self._close()

    async def _close(self) -> None:
        for stream in self._streams:
            stream.cancel()
        if self.channel is not None:
            await self.channel.close(None)
            self.channel = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.callback_server.stop()
        if self._callback_dir is not None:
            shutil.rmtree(self._callback_dir, ignore_errors=True)
            self._callback_dir = None


def _outcome(answer: asyncio.Future[Any]) -> str:
    error = answer.exception()
    if error is None:
        return "answered"
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


async def _refuse_after_broker_close(call: TriggerCall) -> str:
    # go-plugin's broker Close GracefulStops the engine's callback server: calls
    # already running finish, new ones fail (here in-band, a failed workflow).
    return "engine callback server is shutting down"


def parse_handshake(line: str) -> str:
    """The unix socket path from ``1|1|unix|<path>|grpc``; anything else is an error."""
    parts = line.split("|")
    if len(parts) < 5 or parts[0] != "1" or parts[1] != "1" or parts[4] != "grpc":
        raise BrokerUnavailableError(f"Unrecognized remote plugin message: {line!r}")
    if parts[2] != "unix":
        raise BrokerUnavailableError(
            f"plugin handshake: network {parts[2]!r} is not supported here"
        )
    return parts[3]


def _check(error: str, what: str) -> None:
    if error:
        raise PluginError(f"{what}: plugin reported: {error}")


async def _consume(call: Any) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for _ in call:
            pass
