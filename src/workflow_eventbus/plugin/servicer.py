"""``workflow.plugin.v1.PluginService``: the engine's RPCs mapped onto the library.

Conventions (reference plugin-protocol.md §3):

* application errors are answered in-band (``.error`` fields, status OK);
* handles are uuid4 strings; modules and triggers share one namespace
  (``unknown module handle: <id>``), steps have their own
  (``unknown step handle: <id>``);
* a trigger's subscribe loop belongs to the trigger object: StartModule starts
  it, StopModule stops it; no RPC context is involved;
* nothing blocks the event loop, so an ExecuteStep arriving while a
  TriggerWorkflow is in flight (the engine runs the pipeline inside that call)
  is served at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, empty_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError, Message

from .._proto import eventbus_pb2 as pb
from .._proto import plugin_pb2 as ppb
from .._proto import plugin_pb2_grpc as pgrpc
from ..core import capabilities
from ..core.config import decode
from ..core.errors import ConfigError, EventbusError, NotFoundError, RequestError
from ..core.names import (
    MODULE_ALIASES,
    PUBLISH_STEP,
    STEP_TYPES,
    SUBSCRIBE,
    TRIGGER_TYPES,
    canonical_module_type,
)
from ..engine.bus import EventBus
from ..engine.steps import create_step
from ..engine.telemetry import OFF
from ..engine.telemetry.context import pipeline_trace
from ..engine.trigger import SubscribeTrigger, data_keys, fill_trigger_struct, parse_trigger_config
from ..providers import test_doubles_allowed
from ..providers.base import Delivery
from . import contracts
from .callbacks.client import CallbackClient
from .observability import telemetry_from_environ

log = logging.getLogger("workflow_eventbus.plugin")


def _warn_deprecated_type(old: str, new: str, name: str) -> None:
    """The old ``infra.eventbus*`` names still run, but wfctl infra plan takes every
    ``infra.*`` module for a cloud resource: say so to the engine's log."""
    log.warning(
        "module %r: type %s is deprecated: wfctl infra plan takes every infra.* module for "
        "a cloud resource; write type: %s (workflow-plugin-eventbus upgrade-config rewrites it)",
        name,
        old,
        new,
        extra={
            "event": "module.deprecated_type",
            "module_name": name,
            "type": old,
            "canonical": new,
        },
    )


M = TypeVar("M", bound=Message)
Ctx = grpc.aio.ServicerContext[Any, Any]
# Seconds the queued traces get to leave once the triggers have drained.
FLUSH_BUDGET = 1.0
EMPTY_NAME = empty_pb2.Empty.DESCRIPTOR.full_name
STRUCT_NAME = struct_pb2.Struct.DESCRIPTOR.full_name


@dataclass(slots=True)
class _Handle:
    kind: str  # "module" or "trigger"
    type: str
    name: str
    obj: Any


@dataclass(slots=True)
class _StepHandle:
    type: str
    name: str
    step: Any


class InertSubscribeModule:
    """``trigger.eventbus.subscribe`` created as a *module* (Go parity).

    The Go plugin builds a trigger without a callback here, whose Start does
    nothing. We validate the config the same way and stay inert: pipelines get
    messages through CreateTrigger (a pipeline ``trigger:``), not through this."""

    def __init__(self, name: str, cfg: pb.ConsumerConfig) -> None:
        if not cfg.name:
            raise ConfigError(
                f'{SUBSCRIBE} "{name}": name',
                "is required",
                fix="set name to the durable consumer to subscribe to",
            )
        self.name = name
        self.config = cfg

    async def init(self) -> None:
        return None

    async def start(self) -> None:
        log.info(
            "%s %r used as a module: inert (use it as a pipeline trigger)", SUBSCRIBE, self.name
        )

    async def stop(self) -> None:
        return None


def unpack(value: any_pb2.Any, cls: type[M], what: str) -> M:
    """Unpack ``value`` as ``cls``; a different type is a RequestError naming both."""
    expected = cls.DESCRIPTOR.full_name
    got = value.type_url.rsplit("/", 1)[-1]
    if got != expected:
        raise RequestError(
            what,
            f"{what} type mismatch: expected {expected}, got {got or '(empty type_url)'}",
            fix=f"pack a {expected} (type.googleapis.com/{expected})",
        )
    try:  # the type is checked: parse the bytes (Any.Unpack would check it again)
        return cls.FromString(value.value)
    except DecodeError as exc:
        raise RequestError(
            what, f"cannot unpack {what} as {expected}: {exc}", fix="send a valid message"
        ) from exc


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, EventbusError):
        return str(exc)
    log.exception("unexpected error")
    return f"internal error ({type(exc).__name__}): {exc}"


class PluginService(pgrpc.PluginServiceServicer):
    def __init__(self, callbacks: CallbackClient, bus: EventBus | None = None) -> None:
        if bus is None:
            bus = EventBus(
                test_doubles=test_doubles_allowed(os.environ),
                telemetry=telemetry_from_environ(os.environ),
            )
        self.bus = bus
        self.callbacks = callbacks
        self._handles: dict[str, _Handle] = {}
        self._steps: dict[str, _StepHandle] = {}
        self._cut_short: Counter[str] = Counter()  # by workflow type

    # --- static answers ---------------------------------------------------------

    async def GetManifest(self, request: empty_pb2.Empty, context: Ctx) -> ppb.Manifest:  # noqa: N802
        return contracts.manifest()

    async def GetModuleTypes(self, request: empty_pb2.Empty, context: Ctx) -> ppb.TypeList:  # noqa: N802
        return ppb.TypeList(types=contracts.RUNTIME_MODULE_TYPES)

    async def GetStepTypes(self, request: empty_pb2.Empty, context: Ctx) -> ppb.TypeList:  # noqa: N802
        return ppb.TypeList(types=STEP_TYPES)

    async def GetTriggerTypes(self, request: empty_pb2.Empty, context: Ctx) -> ppb.TypeList:  # noqa: N802
        return ppb.TypeList(types=TRIGGER_TYPES)

    async def GetModuleSchemas(  # noqa: N802
        self, request: empty_pb2.Empty, context: Ctx
    ) -> ppb.ModuleSchemaList:
        return contracts.module_schemas()

    async def GetContractRegistry(  # noqa: N802
        self, request: empty_pb2.Empty, context: Ctx
    ) -> ppb.ContractRegistry:
        return contracts.contract_registry()

    async def GetConfigFragment(  # noqa: N802
        self, request: empty_pb2.Empty, context: Ctx
    ) -> ppb.ConfigFragmentResponse:
        return ppb.ConfigFragmentResponse()  # no config fragment to merge

    async def GetAsset(self, request: ppb.GetAssetRequest, context: Ctx) -> ppb.GetAssetResponse:  # noqa: N802
        return ppb.GetAssetResponse(
            error=f"asset {request.path!r}: workflow-plugin-eventbus serves no assets"
        )

    async def InvokeService(  # noqa: N802
        self, request: ppb.InvokeServiceRequest, context: Ctx
    ) -> ppb.InvokeServiceResponse:
        if request.handle_id not in self._handles:
            return ppb.InvokeServiceResponse(error=f"unknown module handle: {request.handle_id}")
        return ppb.InvokeServiceResponse(
            error=f"service method {request.method!r}: eventbus modules expose no service "
            "methods; use the step.eventbus.* steps"
        )

    async def DeliverMessage(  # noqa: N802
        self, request: ppb.DeliverMessageRequest, context: Ctx
    ) -> ppb.DeliverMessageResponse:
        return ppb.DeliverMessageResponse(
            error=f"topic {request.topic!r}: DeliverMessage is not used by workflow-plugin-eventbus; "
            "messages arrive through trigger.eventbus.subscribe"
        )

    async def ConfigureCallback(  # noqa: N802
        self, request: ppb.ConfigureCallbackRequest, context: Ctx
    ) -> ppb.ErrorResponse:
        return ppb.ErrorResponse(error=await self.callbacks.configure(request.broker_id))

    # --- modules ----------------------------------------------------------------

    async def CreateModule(  # noqa: N802
        self, request: ppb.CreateModuleRequest, context: Ctx
    ) -> ppb.HandleResponse:
        try:
            handle = self._create_module(request)
        except Exception as exc:
            return ppb.HandleResponse(error=_error_text(exc))
        return ppb.HandleResponse(handle_id=handle)

    def _create_module(self, request: ppb.CreateModuleRequest) -> str:
        module_type = canonical_module_type(request.type)
        capability = capabilities.MODULES.get(module_type)
        cls = capability.config if capability is not None else None
        if cls is None:
            valid = ", ".join(contracts.RUNTIME_MODULE_TYPES)
            raise NotFoundError(
                f'unknown module type "{request.type}"; this plugin provides {valid}'
            )
        where = f'{module_type} "{request.name}"'
        config: Any
        if request.HasField("typed_config") and request.typed_config.type_url:
            config = _typed_config(request.typed_config, cls)
        else:
            config = request.config if request.HasField("config") else {}
        obj: Any
        if module_type == SUBSCRIBE:
            cfg = config if isinstance(config, cls) else decode(cls, config, setting=where)
            obj = InertSubscribeModule(request.name, cast(pb.ConsumerConfig, cfg))
        else:
            obj = self.bus.create_module(module_type, request.name, config)
        if request.type in MODULE_ALIASES:
            _warn_deprecated_type(request.type, module_type, request.name)
        return self._register(_Handle("module", module_type, request.name, obj))

    def _register(self, handle: _Handle) -> str:
        handle_id = str(uuid.uuid4())
        self._handles[handle_id] = handle
        return handle_id

    async def _lifecycle(
        self, request: ppb.HandleRequest, op: Callable[[_Handle], Awaitable[None]]
    ) -> ppb.ErrorResponse:
        handle = self._handles.get(request.handle_id)
        if handle is None:
            return ppb.ErrorResponse(error=f"unknown module handle: {request.handle_id}")
        try:
            await op(handle)
        except Exception as exc:
            return ppb.ErrorResponse(error=_error_text(exc))
        return ppb.ErrorResponse()

    async def InitModule(self, request: ppb.HandleRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        return await self._lifecycle(request, _init)

    async def StartModule(self, request: ppb.HandleRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        return await self._lifecycle(request, lambda h: h.obj.start())

    async def StopModule(self, request: ppb.HandleRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        return await self._lifecycle(request, lambda h: h.obj.stop())

    async def DestroyModule(self, request: ppb.HandleRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        response = await self._lifecycle(request, lambda h: h.obj.stop())
        self._handles.pop(request.handle_id, None)  # stop, then forget
        return response

    # --- triggers ---------------------------------------------------------------

    async def CreateTrigger(  # noqa: N802
        self, request: ppb.CreateTriggerRequest, context: Ctx
    ) -> ppb.HandleResponse:
        if request.type not in TRIGGER_TYPES:
            return ppb.HandleResponse(
                error=f'unknown trigger type "{request.type}"; this plugin provides {SUBSCRIBE}'
            )
        workflow_type = request.name or request.type
        try:
            mapping = (
                json_format.MessageToDict(request.config) if request.HasField("config") else {}
            )
            cfg = parse_trigger_config(self.bus, mapping, instance=workflow_type)
            trigger = SubscribeTrigger(
                self.bus,
                workflow_type,
                cfg,
                on_delivery=self._trigger_handler(workflow_type, data_keys(cfg)),
            )
        except Exception as exc:
            return ppb.HandleResponse(error=_error_text(exc))
        handle = self._register(_Handle("trigger", request.type, workflow_type, trigger))
        log.info("trigger %s created for %s", request.type, workflow_type)
        return ppb.HandleResponse(handle_id=handle)

    def _trigger_handler(
        self, workflow_type: str, keys: frozenset[str] | None
    ) -> Callable[[Delivery], Awaitable[None]]:
        telemetry = self.bus.telemetry

        async def handle(delivery: Delivery) -> None:
            # Runs after the subscriber's handler_started: with traces on, the fields
            # name this run's consumer span (trace_id, traceparent); off, they are {}.
            extra = telemetry.trigger_fields()
            fill = functools.partial(fill_trigger_struct, delivery, extra=extra, keys=keys)
            try:
                await self.callbacks.trigger_workflow(workflow_type, "message", fill)
            except asyncio.CancelledError:
                self._note_cut_short(workflow_type, delivery)
                raise

        return handle

    def _note_cut_short(self, workflow_type: str, delivery: Delivery) -> None:
        # A stopping trigger cancels the handlers its drain time did not cover
        # (so does a process torn down without a stop).
        self._cut_short[workflow_type] += 1
        log.warning(
            "%s: the pipeline for %s sequence %d (delivery %d) was still running when the "
            "trigger's drain time ran out: its TriggerWorkflow call is cancelled and the "
            "message nak'd, so it is redelivered (the engine may still finish this run)",
            workflow_type,
            delivery.subject,
            delivery.sequence,
            delivery.delivery_count,
            extra={
                "event": "trigger.pipeline_cut_short",
                "trigger": workflow_type,
                "stream": delivery.stream,
                "consumer": delivery.consumer,
                "subject": delivery.subject,
                "sequence": delivery.sequence,
                "delivery_count": delivery.delivery_count,
            },
        )

    # --- steps ------------------------------------------------------------------

    async def CreateStep(  # noqa: N802
        self, request: ppb.CreateStepRequest, context: Ctx
    ) -> ppb.HandleResponse:
        try:
            step = self._build_step(request.type, request.name, request)
        except Exception as exc:
            return ppb.HandleResponse(error=_error_text(exc))
        handle_id = str(uuid.uuid4())
        self._steps[handle_id] = _StepHandle(request.type, request.name, step)
        return ppb.HandleResponse(handle_id=handle_id)

    def _build_step(
        self, step_type: str, name: str, request: ppb.CreateStepRequest | ppb.ExecuteStepRequest
    ) -> Any:
        contract = capabilities.STEPS.get(step_type)
        if contract is None:
            raise NotFoundError(
                f'unknown step type "{step_type}"; this plugin provides {", ".join(STEP_TYPES)}'
            )
        return create_step(self.bus, step_type, name, _step_config(request, contract.config))

    async def ExecuteStep(  # noqa: N802
        self, request: ppb.ExecuteStepRequest, context: Ctx
    ) -> ppb.ExecuteStepResponse:
        entry = self._steps.get(request.handle_id)
        if entry is None:
            return ppb.ExecuteStepResponse(error=f"unknown step handle: {request.handle_id}")
        contract = capabilities.STEPS[entry.type]
        response = ppb.ExecuteStepResponse()
        try:
            output = await self._execute(entry, contract, request)
        except Exception as exc:
            response.error = _error_text(exc)
            output = contract.output()
        response.typed_output.Pack(output)
        return response

    async def _execute(
        self,
        entry: _StepHandle,
        contract: capabilities.StepCapability,
        request: ppb.ExecuteStepRequest,
    ) -> Message:
        override = None
        if _has_config(request):  # the engine sends the resolved config on every call
            raw = _step_config(request, contract.config)
            if raw is not None:
                where = f'{entry.type} "{entry.name}": config'
                override = (
                    raw
                    if isinstance(raw, contract.config)
                    else decode(contract.config, raw, setting=where)
                )
        typed_input = None
        if request.HasField("typed_input") and request.typed_input.type_url:
            typed_input = unpack(request.typed_input, contract.input, "typed input")
        try:
            call = entry.step.execute(typed_input, config=override)
            if entry.type == PUBLISH_STEP and self.bus.telemetry is not OFF:
                carrier = _pipeline_trace(request)
                if carrier is not None:
                    call = _continuing(carrier, call)
            output: Message = await call
        except RequestError as exc:
            if typed_input is None:
                name = contract.input.DESCRIPTOR.full_name
                raise RequestError(
                    "typed_input",
                    f"missing (expected {name}) and the step config does not fill in: {exc}",
                    fix="send typed_input or set the field in the step config",
                ) from exc
            raise
        return output

    async def DestroyStep(self, request: ppb.HandleRequest, context: Ctx) -> ppb.ErrorResponse:  # noqa: N802
        if self._steps.pop(request.handle_id, None) is None:
            return ppb.ErrorResponse(error=f"unknown step handle: {request.handle_id}")
        return ppb.ErrorResponse()

    # --- shutdown ---------------------------------------------------------------

    async def drain_triggers(self, budget: float | None = None) -> None:
        """Stop every running trigger at once. Each stops fetching, gives its running
        pipelines up to its ``drain_timeout`` to finish (then cancels and naks them)
        and naks what it fetched but had not started. ``budget``: seconds the host
        allows in all (a deadline on its stop request), which caps every drain."""
        triggers = [h for h in self._handles.values() if h.kind == "trigger"]
        began = time.monotonic()
        await asyncio.gather(*(self._drain(handle, budget) for handle in triggers))
        # The drained runs' spans leave before the host is told it may kill us.
        left = FLUSH_BUDGET if budget is None else budget - (time.monotonic() - began)
        if left > 0:
            try:
                await self.bus.telemetry.aflush(min(left, FLUSH_BUDGET))
            except Exception as exc:  # telemetry never blocks a stop
                log.warning("shutdown: flushing telemetry failed: %s", exc)

    async def _drain(self, handle: _Handle, budget: float | None) -> None:
        trigger = cast(SubscribeTrigger, handle.obj)
        subscription = trigger.subscription
        if subscription is None or not subscription.running:
            return
        allowed = subscription.drain_limit(budget)
        if allowed < subscription.options.drain_timeout:
            log.warning(
                "%s: drain_timeout %gs cut to %.1fs: the host's stop request leaves %.1fs",
                handle.name,
                subscription.options.drain_timeout,
                allowed,
                budget,
                extra={
                    "event": "trigger.drain_cut",
                    "trigger": handle.name,
                    "stream": subscription.stream,
                    "consumer": subscription.consumer,
                    "drain_timeout": subscription.options.drain_timeout,
                    "allowed": round(allowed, 3),
                },
            )
        running = subscription.stats.in_flight
        cut_before = self._cut_short[handle.name]
        log.info(
            "%s: stopping; %d running pipeline(s) get up to %.1fs to finish",
            handle.name,
            running,
            allowed,
        )
        began = time.monotonic()
        try:
            await trigger.stop(within=budget)
        except Exception as exc:
            log.warning("shutdown: stopping %s %r failed: %s", handle.type, handle.name, exc)
            return
        took = time.monotonic() - began
        cut = self._cut_short[handle.name] - cut_before
        if cut:
            log.warning(
                "%s: stopped after %.1fs; %d of %d pipeline(s) were cut short and nak'd",
                handle.name,
                took,
                cut,
                running,
                extra={
                    "event": "trigger.stopped_cut_short",
                    "trigger": handle.name,
                    "stream": subscription.stream,
                    "consumer": subscription.consumer,
                    "cut_short": cut,
                    "running": running,
                    "seconds": round(took, 3),
                },
            )
        else:
            log.info("%s: drained in %.1fs", handle.name, took)

    async def aclose(self, timeout: float = 1.2, *, drain_budget: float | None = None) -> None:
        """Drain the triggers (``drain_triggers``, not bounded by ``timeout``), then
        stop the modules in reverse creation order within ``timeout`` seconds."""
        await self.drain_triggers(drain_budget)
        modules = [h for h in reversed(self._handles.values()) if h.kind == "module"]
        try:
            await asyncio.wait_for(_stop_all(modules), timeout)
        except TimeoutError:
            log.warning("shutdown: modules did not stop within %.1fs", timeout)
        await self.callbacks.close()
        await self.bus.telemetry.aclose()


async def _init(handle: _Handle) -> None:
    if handle.kind == "module":  # trigger handles get no Init (Go SDK parity)
        await handle.obj.init()


async def _stop_all(handles: list[_Handle]) -> None:
    for handle in handles:
        try:
            await handle.obj.stop()
        except Exception as exc:
            log.warning("shutdown: stopping %s %r failed: %s", handle.type, handle.name, exc)


def _pipeline_trace(request: ppb.ExecuteStepRequest) -> dict[str, str] | None:
    """The trace context of the pipeline that runs this step: the ``traceparent`` (and
    ``tracestate``) of its trigger data, which the engine sends in ``current`` (the
    pipeline's data) and ``trigger_data``."""
    for data in (request.current, request.trigger_data):
        fields = data.fields
        if "traceparent" not in fields or not fields["traceparent"].string_value:
            continue
        carrier = {"traceparent": fields["traceparent"].string_value}
        if "tracestate" in fields and fields["tracestate"].string_value:
            carrier["tracestate"] = fields["tracestate"].string_value
        return carrier
    return None


async def _continuing(carrier: dict[str, str], call: Awaitable[M]) -> M:
    """Run ``call`` with ``carrier`` as the parent of the publishes it makes."""
    with pipeline_trace(carrier):
        return await call


def _has_config(request: ppb.ExecuteStepRequest) -> bool:
    if request.HasField("typed_config") and request.typed_config.type_url:
        return True
    return request.HasField("config") and len(request.config.fields) > 0


def _typed_config(value: any_pb2.Any, cls: type[M]) -> M | struct_pb2.Struct:
    """A typed config: ``cls`` itself, or the Struct our contracts name for configs
    with enums or durations (contracts.engine_config_message), decoded later."""
    if value.type_url.endswith("/" + STRUCT_NAME):
        return unpack(value, struct_pb2.Struct, "typed config")
    return unpack(value, cls, "typed config")


def _step_config(request: ppb.CreateStepRequest | ppb.ExecuteStepRequest, cls: type[M]) -> Any:
    """The typed config (our step config message, a Struct, or Empty meaning none),
    else the Struct ``config``."""
    if request.HasField("typed_config") and request.typed_config.type_url:
        if request.typed_config.type_url.endswith("/" + EMPTY_NAME):
            return None  # the Go plugin's registry declared no config: same as none
        return _typed_config(request.typed_config, cls)
    if request.HasField("config"):
        return request.config
    return None
