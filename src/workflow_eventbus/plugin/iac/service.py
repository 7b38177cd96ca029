"""The gRPC servicers of the IaC contract: IaCProviderRequired, the two drift
detectors and ResourceDriver, over the drivers of :mod:`.drivers`.

An RPC the provider cannot do answers UNIMPLEMENTED with the reason (wfctl turns
that into "method unimplemented" and says so). Our errors map to status codes:
ConfigError -> INVALID_ARGUMENT, NotFoundError -> NOT_FOUND, ConflictError ->
FAILED_PRECONDITION, BrokerUnavailableError -> UNAVAILABLE, any other -> INTERNAL;
the message is the error's own (it names the setting and the fix, no secrets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..._proto import iac_pb2 as ipb
from ..._proto import iac_pb2_grpc as igrpc
from ...core.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    EventbusError,
    NotFoundError,
)
from ..contracts import plugin_version
from . import wire
from .drivers import DRIVERS, Driver, Settings

Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

_CODES: tuple[tuple[type[EventbusError], grpc.StatusCode], ...] = (
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (BrokerUnavailableError, grpc.StatusCode.UNAVAILABLE),
)

UNSUPPORTED = {
    "ResolveSizing": "event bus resources have no sizes; remove size: from the resource",
    "BootstrapStateBackend": (
        "the eventbus provider hosts no IaC state; use an iac.state module "
        "(backend: filesystem works offline)"
    ),
    "Scale": "streams, consumers and the single self-hosted server have no replicas to scale",
}


async def _answer(context: Ctx, call: Awaitable[T]) -> T:
    try:
        return await call
    except EventbusError as exc:
        code = next((c for kind, c in _CODES if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)
        await context.abort(code, str(exc))
        raise  # abort raises; this line satisfies the type checker


async def _unsupported(context: Ctx, method: str) -> Any:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: {UNSUPPORTED[method]}")


class Provider:
    """State shared by the servicers of one plugin process: the settings wfctl sent
    with Initialize and one driver per resource type."""

    def __init__(self) -> None:
        self.configure(Settings())

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        self.drivers = {d.resource_type: d(settings) for d in DRIVERS}

    def driver(self, resource_type: str) -> Driver:
        found = self.drivers.get(resource_type)
        if found is None:
            raise ConfigError(
                "resource_type",
                "is not a type of the eventbus IaC provider",
                value=resource_type,
                fix=f"use one of: {', '.join(wire.RESOURCE_TYPES)}",
            )
        return found

    async def plan(self, request: ipb.PlanRequest) -> ipb.IaCPlan:
        """Create what is new, diff what exists (update/replace), delete what was removed."""
        current = {state.name: state for state in request.current}
        actions: list[ipb.PlanAction] = []
        for spec in request.desired:
            state = current.pop(spec.name, None)
            if state is None:
                actions.append(ipb.PlanAction(action="create", resource=spec))
                continue
            output = ipb.ResourceOutput(
                name=state.name,
                type=state.type,
                provider_id=state.provider_id,
                outputs_json=state.outputs_json,
            )
            result = await self.driver(spec.type).diff(spec, output)
            if result.needs_update or result.needs_replace:
                verb = "replace" if result.needs_replace else "update"
                actions.append(
                    ipb.PlanAction(
                        action=verb, resource=spec, current=state, changes=result.changes
                    )
                )
        for state in current.values():
            spec = ipb.ResourceSpec(name=state.name, type=state.type)
            actions.append(ipb.PlanAction(action="delete", resource=spec, current=state))
        return ipb.IaCPlan(id="eventbus-plan", actions=actions)

    async def destroy(self, refs: list[ipb.ResourceRef]) -> ipb.DestroyResult:
        result = ipb.DestroyResult()
        for ref in wire.destroy_order(refs):
            try:
                await self.driver(ref.type).delete(ref)
            except EventbusError as exc:
                result.errors.append(
                    ipb.ActionError(resource=ref.name, action="delete", error=str(exc))
                )
            else:
                result.destroyed.append(ref.name)
        return result

    async def status(self, ref: ipb.ResourceRef) -> ipb.ResourceStatus:
        try:
            out = await self.driver(ref.type).read(ref)
        except NotFoundError:
            return ipb.ResourceStatus(
                name=ref.name, type=ref.type, provider_id=ref.provider_id, status="stopped"
            )
        return ipb.ResourceStatus(
            name=ref.name,
            type=ref.type,
            provider_id=out.provider_id,
            status="running",
            outputs_json=out.outputs_json,
        )

    async def drifts(
        self, refs: list[ipb.ResourceRef], specs: dict[str, ipb.ResourceSpec]
    ) -> list[ipb.DriftResult]:
        results = []
        for ref in refs:
            spec = specs.get(ref.name)
            drifts = await self.driver(ref.type).drift(ref, spec)
            results.append(wire.drift_result(ref, drifts, compared=spec is not None))
        return results

    async def import_state(self, request: ipb.ImportRequest) -> ipb.ResourceState:
        ref = ipb.ResourceRef(type=request.resource_type, provider_id=request.provider_id)
        out = await self.driver(request.resource_type).read(ref)
        return ipb.ResourceState(
            id=out.provider_id,
            type=out.type,
            provider=wire.PROVIDER_NAME,
            provider_id=out.provider_id,
            outputs_json=out.outputs_json,
        )


class RequiredServicer(igrpc.IaCProviderRequiredServicer):
    def __init__(self, provider: Provider) -> None:
        self.p = provider

    async def Initialize(  # noqa: N802
        self, request: ipb.InitializeRequest, context: Ctx
    ) -> ipb.InitializeResponse:
        async def run() -> ipb.InitializeResponse:
            config = wire.load_json(request.config_json, setting="iac.provider config")
            self.p.configure(Settings.from_config(config))
            return ipb.InitializeResponse()

        return await _answer(context, run())

    async def Name(self, request: ipb.NameRequest, context: Ctx) -> ipb.NameResponse:  # noqa: N802
        return ipb.NameResponse(name=wire.PROVIDER_NAME)

    async def Version(self, request: ipb.VersionRequest, context: Ctx) -> ipb.VersionResponse:  # noqa: N802
        return ipb.VersionResponse(version=plugin_version())

    async def Capabilities(  # noqa: N802
        self, request: ipb.CapabilitiesRequest, context: Ctx
    ) -> ipb.CapabilitiesResponse:
        return capabilities()

    async def Plan(self, request: ipb.PlanRequest, context: Ctx) -> ipb.PlanResponse:  # noqa: N802
        return ipb.PlanResponse(plan=await _answer(context, self.p.plan(request)))

    async def Destroy(self, request: ipb.DestroyRequest, context: Ctx) -> ipb.DestroyResponse:  # noqa: N802
        return ipb.DestroyResponse(
            result=await _answer(context, self.p.destroy(list(request.refs)))
        )

    async def Status(self, request: ipb.StatusRequest, context: Ctx) -> ipb.StatusResponse:  # noqa: N802
        statuses = [await _answer(context, self.p.status(ref)) for ref in request.refs]
        return ipb.StatusResponse(statuses=statuses)

    async def Import(self, request: ipb.ImportRequest, context: Ctx) -> ipb.ImportResponse:  # noqa: N802
        return ipb.ImportResponse(state=await _answer(context, self.p.import_state(request)))

    async def ResolveSizing(  # noqa: N802
        self, request: ipb.ResolveSizingRequest, context: Ctx
    ) -> ipb.ResolveSizingResponse:
        return await _unsupported(context, "ResolveSizing")  # type: ignore[no-any-return]

    async def BootstrapStateBackend(  # noqa: N802
        self, request: ipb.BootstrapStateBackendRequest, context: Ctx
    ) -> ipb.BootstrapStateBackendResponse:
        return await _unsupported(context, "BootstrapStateBackend")  # type: ignore[no-any-return]


def capabilities() -> ipb.CapabilitiesResponse:
    return ipb.CapabilitiesResponse(
        capabilities=[
            ipb.IaCCapabilityDeclaration(resource_type=t, tier=1, operations=list(wire.OPERATIONS))
            for t in wire.RESOURCE_TYPES
        ],
        compute_plan_version=wire.COMPUTE_PLAN_VERSION,
    )


class DriftServicer(igrpc.IaCProviderDriftDetectorServicer):
    def __init__(self, provider: Provider) -> None:
        self.p = provider

    async def DetectDrift(  # noqa: N802
        self, request: ipb.DetectDriftRequest, context: Ctx
    ) -> ipb.DetectDriftResponse:
        """Without configs only existence is checked: ghost, or unknown (present)."""
        return ipb.DetectDriftResponse(
            drifts=await _answer(context, self.p.drifts(list(request.refs), {}))
        )

    async def DetectDriftWithSpecs(  # noqa: N802
        self, request: ipb.DetectDriftWithSpecsRequest, context: Ctx
    ) -> ipb.DetectDriftWithSpecsResponse:
        drifts = await _answer(context, self.p.drifts(list(request.refs), dict(request.specs)))
        return ipb.DetectDriftWithSpecsResponse(drifts=drifts)


class DriftConfigServicer(igrpc.IaCProviderDriftConfigDetectorServicer):
    def __init__(self, provider: Provider) -> None:
        self.p = provider

    async def DetectDriftConfig(  # noqa: N802
        self, request: ipb.DetectDriftConfigRequest, context: Ctx
    ) -> ipb.DetectDriftConfigResponse:
        drifts = await _answer(context, self.p.drifts(list(request.refs), dict(request.specs)))
        return ipb.DetectDriftConfigResponse(drifts=drifts)


class DriverServicer(igrpc.ResourceDriverServicer):
    def __init__(self, provider: Provider) -> None:
        self.p = provider

    async def _run(
        self, context: Ctx, resource_type: str, work: Callable[[Driver], Awaitable[T]]
    ) -> T:
        async def run() -> T:
            return await work(self.p.driver(resource_type))

        return await _answer(context, run())

    async def Create(  # noqa: N802
        self, request: ipb.ResourceCreateRequest, context: Ctx
    ) -> ipb.ResourceCreateResponse:
        out = await self._run(context, request.resource_type, lambda d: d.create(request.spec))
        return ipb.ResourceCreateResponse(output=out)

    async def Read(  # noqa: N802
        self, request: ipb.ResourceReadRequest, context: Ctx
    ) -> ipb.ResourceReadResponse:
        out = await self._run(context, request.resource_type, lambda d: d.read(request.ref))
        return ipb.ResourceReadResponse(output=out)

    async def Update(  # noqa: N802
        self, request: ipb.ResourceUpdateRequest, context: Ctx
    ) -> ipb.ResourceUpdateResponse:
        out = await self._run(
            context, request.resource_type, lambda d: d.update(request.ref, request.spec)
        )
        return ipb.ResourceUpdateResponse(output=out)

    async def Delete(  # noqa: N802
        self, request: ipb.ResourceDeleteRequest, context: Ctx
    ) -> ipb.ResourceDeleteResponse:
        await self._run(context, request.resource_type, lambda d: d.delete(request.ref))
        return ipb.ResourceDeleteResponse()

    async def Diff(  # noqa: N802
        self, request: ipb.ResourceDiffRequest, context: Ctx
    ) -> ipb.ResourceDiffResponse:
        result = await self._run(
            context, request.resource_type, lambda d: d.diff(request.desired, request.current)
        )
        return ipb.ResourceDiffResponse(result=result)

    async def Scale(  # noqa: N802
        self, request: ipb.ResourceScaleRequest, context: Ctx
    ) -> ipb.ResourceScaleResponse:
        return await _unsupported(context, "Scale")  # type: ignore[no-any-return]

    async def HealthCheck(  # noqa: N802
        self, request: ipb.ResourceHealthCheckRequest, context: Ctx
    ) -> ipb.ResourceHealthCheckResponse:
        async def check(driver: Driver) -> ipb.HealthResult:
            try:
                await driver.read(request.ref)
            except NotFoundError as exc:
                return ipb.HealthResult(healthy=False, message=str(exc))
            return ipb.HealthResult(healthy=True, message=f"{request.resource_type} present")

        result = await self._run(context, request.resource_type, check)
        return ipb.ResourceHealthCheckResponse(result=result)

    async def SensitiveKeys(  # noqa: N802
        self, request: ipb.SensitiveKeysRequest, context: Ctx
    ) -> ipb.SensitiveKeysResponse:
        """None: outputs carry URLs without credentials (the self-hosted server has no auth)."""
        return ipb.SensitiveKeysResponse(keys=[])

    async def Troubleshoot(  # noqa: N802
        self, request: ipb.TroubleshootRequest, context: Ctx
    ) -> ipb.TroubleshootResponse:
        """The failure message already names the setting and the fix; nothing to add."""
        return ipb.TroubleshootResponse(diagnostics=[])


def register(server: grpc.aio.Server) -> None:
    provider = Provider()
    igrpc.add_IaCProviderRequiredServicer_to_server(RequiredServicer(provider), server)
    igrpc.add_IaCProviderDriftDetectorServicer_to_server(DriftServicer(provider), server)
    igrpc.add_IaCProviderDriftConfigDetectorServicer_to_server(
        DriftConfigServicer(provider), server
    )
    igrpc.add_ResourceDriverServicer_to_server(DriverServicer(provider), server)
