"""A small OTLP/gRPC trace receiver: the collector end the exporter talks to, on loopback.

It serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with
grpc.aio on a free 127.0.0.1 port and keeps every ExportTraceServiceRequest.
Tests point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at :attr:`OtlpReceiver.endpoint` and
poll :meth:`OtlpReceiver.wait_for_spans`; :func:`running_receiver` runs one
for a block (a test module's fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tsvc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

PRODUCER = trace_pb2.Span.SPAN_KIND_PRODUCER
CONSUMER = trace_pb2.Span.SPAN_KIND_CONSUMER
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR


@dataclass(frozen=True)
class Received:
    """One exported span with its resource's attributes, ids as hex text."""

    span: trace_pb2.Span
    resource: dict[str, Any]

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def kind(self) -> int:
        return self.span.kind

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes_of(self.span.attributes)


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class OtlpReceiver(tgrpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[tsvc.ExportTraceServiceRequest] = []
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def Export(
        self, request: tsvc.ExportTraceServiceRequest, context: Any
    ) -> tsvc.ExportTraceServiceResponse:
        self.requests.append(request)
        return tsvc.ExportTraceServiceResponse()

    async def start(self) -> None:
        server = grpc.aio.server()
        tgrpc.add_TraceServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def spans(self) -> list[Received]:
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    found += [Received(span, resource) for span in scope_spans.spans]
        return found

    async def wait_for_spans(
        self, done: Callable[[list[Received]], bool], timeout: float = 15.0
    ) -> list[Received]:
        """Poll until ``done(spans)`` holds; the spans then."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                summary = [(s.name, s.kind, s.trace_id[:8]) for s in spans]
                raise AssertionError(f"the receiver did not get the spans in time: {summary}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[OtlpReceiver]:
    """A receiver serving for the block (each test gets its own: no spans of another)."""
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def traceparent_prefix(span: Received) -> str:
    """``traceparent`` of ``span`` up to its flags (the SDK may set more than sampled)."""
    return f"00-{span.trace_id}-{span.span_id}-"
