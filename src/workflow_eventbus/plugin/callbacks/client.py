"""The client side of the engine's EngineCallbackService.

``ConfigureCallback{broker_id}`` names the broker service id under which the
engine advertised its callback listener (a ConnInfo on the broker stream).
The two can arrive in either order, so we wait up to ``wait`` seconds for the
ConnInfo, then dial ``unix:<address>`` (or ``host:port`` for tcp). Calls go
through a :class:`~.transport.UnaryTransport` (our lean HTTP/2 client unless
``WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT=grpc``): one TriggerWorkflow per
delivered message is the plugin's hottest RPC, and each has a deadline
(``WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT``, default 300 s).

``log()`` sends ``Log`` entries to the engine without making its caller wait:
entries go into a bounded queue that one task of the client sends, in order;
when the queue is full an entry is dropped and counted (``log_dropped``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from google.protobuf import struct_pb2

from ..._proto import plugin_pb2 as ppb
from ...core.errors import BrokerUnavailableError, ProviderError, redact
from ...core.lifecycle import cancel_and_wait
from ..broker import ConnInfoStore
from .errors import RpcError
from .transport import (
    TIMEOUT_ENV,
    UnaryTransport,
    callback_timeout,
    check_kind,
    check_timeout,
    open_channel,
    transport_kind,
)

log = logging.getLogger("workflow_eventbus.plugin")

_SERVICE = ppb.DESCRIPTOR.services_by_name["EngineCallbackService"].full_name
TRIGGER_WORKFLOW = f"/{_SERVICE}/TriggerWorkflow"
LOG = f"/{_SERVICE}/Log"
LOG_QUEUE = 256  # Log entries waiting to be sent; more are dropped
LOG_TIMEOUT = 5.0  # seconds for one Log call
LOG_FLUSH = 0.2  # seconds close() waits for queued Log entries (inside the stop budget)

LogValue = str | int | float | bool | None


class CallbackClient:
    """One EngineCallbackService channel, replaced on each ConfigureCallback.

    ``timeout`` (seconds) and ``transport`` (``h2`` or ``grpc``) override what the
    environment (``environ``, default ``os.environ``) says; a bad value of either
    is a :class:`~workflow_eventbus.core.errors.ConfigError` here, at start-up.
    """

    def __init__(
        self,
        store: ConnInfoStore,
        *,
        wait: float = 5.0,
        timeout: float | None = None,
        transport: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        self._wait = wait
        self.timeout = (
            callback_timeout(environ)
            if timeout is None
            else check_timeout(timeout, "CallbackClient timeout", timeout)
        )
        self.transport = (
            transport_kind(environ)
            if transport is None
            else check_kind(transport, "CallbackClient transport")
        )
        self._channel: UnaryTransport | None = None
        self._logs: asyncio.Queue[bytes] = asyncio.Queue(LOG_QUEUE)
        self._log_task: asyncio.Task[None] | None = None
        self.log_sent = 0  # Log calls the engine answered
        self.log_failed = 0  # Log calls that failed (the engine did not take them)
        self.log_dropped = 0  # entries dropped because the queue was full

    @property
    def configured(self) -> bool:
        return self._channel is not None

    async def configure(self, broker_id: int) -> str:
        """Connect to the callback service; returns an error text ('' on success)."""
        if broker_id == 0:
            return "callback broker id is required"
        info = await self._store.wait(broker_id, self._wait)
        if info is None:
            return (
                f"dial callback broker: timeout waiting for connection info "
                f"(broker id {broker_id} was never announced on the GRPCBroker stream "
                f"within {self._wait:g}s)"
            )
        await self._close_channel()
        self._channel = open_channel(info.network, info.address, kind=self.transport)
        log.info(
            "callback service configured (broker id %d, %s %s, %s transport, deadline %gs)",
            broker_id,
            info.network,
            info.address,
            self.transport,
            self.timeout,
        )
        return ""

    async def trigger_workflow(
        self, trigger_type: str, action: str, fill: Callable[[struct_pb2.Struct], None]
    ) -> None:
        """Run the workflow synchronously; raise when the engine reports a failure.

        ``fill`` writes the data into the request's Struct in place (building a
        Struct and passing it would copy it once more)."""
        channel = self._channel
        if channel is None:
            raise BrokerUnavailableError(
                f"trigger {trigger_type}: the trigger callback client is not configured; "
                "the engine must call ConfigureCallback (only `workflow server` does, "
                "wfctl never delivers triggers)"
            )
        request = ppb.TriggerWorkflowRequest(trigger_type=trigger_type, action=action)
        fill(request.data)
        try:
            answer = await channel.unary(
                TRIGGER_WORKFLOW, request.SerializeToString(), self.timeout
            )
        except RpcError as exc:
            hint = ""
            if exc.code == "DEADLINE_EXCEEDED":
                hint = (
                    f" (the callback deadline is {self.timeout:g}s; set {TIMEOUT_ENV} "
                    "higher if pipelines legitimately run longer)"
                )
            raise ProviderError(
                f"trigger {trigger_type}: TriggerWorkflow RPC failed: "
                f"{exc.code}: {exc.details}{hint}"
            ) from exc
        response = ppb.ErrorResponse.FromString(answer)
        if response.error:
            raise ProviderError(f"trigger {trigger_type}: workflow failed: {response.error}")

    def log(self, level: str, message: str, fields: Mapping[str, LogValue] | None = None) -> bool:
        """Queue a ``Log`` entry for the engine; never waits. Strings are redacted.

        Returns False when the entry is not sent: the callback channel is not
        configured yet (the caller's stderr line is all there is), or the queue
        is full (counted in ``log_dropped``). Call from the event loop's thread."""
        if self._channel is None:
            return False
        request = ppb.LogRequest(level=level, message=redact(message))
        for key, value in (fields or {}).items():
            request.fields[key] = redact(value) if isinstance(value, str) else value
        try:
            self._logs.put_nowait(request.SerializeToString())
        except asyncio.QueueFull:
            self.log_dropped += 1
            return False
        if self._log_task is None:
            self._log_task = asyncio.get_running_loop().create_task(
                self._send_logs(), name="callback-log"
            )
        return True

    async def _send_logs(self) -> None:
        while True:
            request = await self._logs.get()
            channel = self._channel
            if channel is None:
                self._logs.task_done()
                continue  # closed meanwhile
            try:
                await channel.unary(LOG, request, LOG_TIMEOUT)
            except Exception as exc:  # RpcError, or the channel failing to open
                self.log_failed += 1
                # No ``event`` in extra: this line never becomes a Log entry itself.
                log.debug("Log callback failed: %s", exc)
            else:
                self.log_sent += 1
            finally:
                self._logs.task_done()

    async def flush_logs(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every queued entry has been sent (or
        has failed); True when none is left."""
        if self._log_task is None or self._log_task.done():
            return self._logs.empty()
        try:
            await asyncio.wait_for(self._logs.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def close(self, flush: float = LOG_FLUSH) -> None:
        """Give queued Log entries up to ``flush`` seconds, drop the rest, close."""
        if flush > 0:
            await self.flush_logs(flush)
        task, self._log_task = self._log_task, None
        if task is not None:
            await cancel_and_wait(task)
        while not self._logs.empty():
            self._logs.get_nowait()
            self._logs.task_done()
        await self._close_channel()
