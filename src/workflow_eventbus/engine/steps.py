"""Steps: step.eventbus.publish, step.eventbus.consume, step.eventbus.ack.

Each step has a config message (set once, in the pipeline YAML) and a typed
input (built per run, by the engine, from the pipeline's current data). A field
set in the config wins; the input fills only what the config leaves unset. In a
trigger pipeline the current data *is* the incoming message, so a publish step
with ``subject: orders.shipped`` in its config publishes there, never back to
the subject it was triggered by.
"""

from __future__ import annotations

import abc
import functools
import logging
from typing import Any, ClassVar, Generic, TypeVar

from google.protobuf.message import Message

from .._proto import eventbus_pb2 as pb
from ..core import capabilities
from ..core.config import decode, duration_seconds
from ..core.defaults import DEFAULT_CONSUME_MAX_WAIT, MAX_BATCH
from ..core.errors import ConfigError, EventbusError, NotFoundError, RequestError
from ..core.headers import MSG_ID_HEADER
from ..core.names import ACK_STEP, CONSUME_STEP, PUBLISH_STEP
from ..core.subjects import validate_subject
from ..providers.base import AckAction, OutboundMessage, PublishResult, batch_size
from .bus import EventBus
from .telemetry import OFF, Telemetry
from .telemetry.context import announce

log = logging.getLogger("workflow_eventbus.engine.steps")

C = TypeVar("C", bound=Message)
I = TypeVar("I", bound=Message)  # noqa: E741
O = TypeVar("O", bound=Message)  # noqa: E741


class Step(abc.ABC, Generic[C, I, O]):
    type_name: ClassVar[str]  # its messages are in core.capabilities.STEPS

    def __init__(self, bus: EventBus, name: str, config: C) -> None:
        self.capability = capabilities.step(self.type_name)
        self.bus = bus
        self.name = name
        self.config = config

    async def execute(self, request: I | None = None, config: C | None = None) -> O:
        """Run once; ``config`` overrides the stored config for this call only."""
        cfg = config if config is not None else self.config
        req = request if request is not None else self._new_input()
        return await self._run(cfg, req)  # type: ignore[arg-type]

    @abc.abstractmethod
    async def _run(self, cfg: C, req: I) -> O: ...

    def _new_input(self) -> Message:
        return self.capability.input()

    def _where(self, field: str) -> str:
        return f'{self.type_name} "{self.name}": {field}'


class PublishStep(Step[pb.PublishStepConfig, pb.PublishRequest, pb.PublishResponse]):
    type_name = PUBLISH_STEP

    async def _run(self, cfg: pb.PublishStepConfig, req: pb.PublishRequest) -> pb.PublishResponse:
        provider = await self.bus.ready(cfg.broker_ref or req.broker_ref)
        telemetry = self.bus.telemetry
        if req.messages:
            _check_batch(len(req.messages), self._where("messages"))
            built = [self._outbound(cfg, req, item) for item in req.messages]
            outgoing = [message for message, _ in built]
            tokens = [token for _, token in built]
            try:
                results: list[PublishResult | Exception] = await provider.publish_many(outgoing)
            except EventbusError as exc:
                for token in tokens:
                    _published(telemetry, token, provider.broker_name, exc)
                raise
            for token, result in zip(tokens, results, strict=True):
                _published(telemetry, token, provider.broker_name, result)
            return _batch_response(results)
        message, token = self._outbound(cfg, req, None)
        try:
            result = await provider.publish(message)
        except EventbusError as exc:
            _published(telemetry, token, provider.broker_name, exc)
            raise
        _published(telemetry, token, provider.broker_name, result)
        return result.to_proto()

    def _outbound(
        self, cfg: pb.PublishStepConfig, req: pb.PublishRequest, item: pb.PublishRequest | None
    ) -> tuple[OutboundMessage, object]:
        """The message to publish, and the telemetry token of its publish."""
        # Precedence: step config, then the batch item, then the request itself.
        layers = [req] if item is None else [item, req]
        subject = cfg.subject or _first(layers, "subject")
        if not subject:
            raise RequestError(
                self._where("subject"),
                "is required",
                fix="set subject in the step config or pass it in the input",
            )
        _check_publish_subject(subject, self._where("subject"))
        headers: dict[str, str] = {}
        # Updating from an empty proto map costs as much as from a full one: skip those.
        for layer in reversed(layers):
            if layer.headers:
                headers.update(layer.headers)
        # In a trigger pipeline the input's headers are the incoming message's, and its
        # dedup id would make the broker drop this new message as a duplicate of it: an
        # input's Nats-Msg-Id is not carried over (msg_id, in the config or the input,
        # sets this message's own).
        headers.pop(MSG_ID_HEADER, None)
        if cfg.headers:
            headers.update(cfg.headers)
        payload = cfg.payload.encode() if cfg.payload else _first_bytes(layers)
        message = OutboundMessage(
            subject=subject,
            payload=payload,
            headers=headers,
            correlation_id=cfg.correlation_id or _first(layers, "correlation_id"),
            msg_id=cfg.msg_id or _first(layers, "msg_id"),
        )
        telemetry = self.bus.telemetry
        # The hook may add to ``headers`` (the message's own dict) before it is sent.
        token = None if telemetry is OFF else announce(telemetry, headers, message)
        return message, token


def _published(
    telemetry: Telemetry, token: object, broker: str, result: PublishResult | Exception
) -> None:
    if isinstance(result, Exception):
        telemetry.after_publish(token, broker, "", 1, str(result) or type(result).__name__)
    else:
        telemetry.after_publish(token, broker, result.stream, 1, None)


@functools.lru_cache(maxsize=1024)
def _check_publish_subject(subject: str, setting: str) -> None:
    # Pure and called per publish, mostly with the few subjects of the step configs;
    # only valid subjects are remembered (an invalid one raises every time).
    validate_subject(subject, setting=setting, wildcards=False)


def _check_batch(count: int, setting: str) -> None:
    if count > MAX_BATCH:
        raise RequestError(
            setting,
            f"{count} items in one call; at most {MAX_BATCH} are accepted",
            fix=f"split the batch into calls of at most {MAX_BATCH}",
        )


def _first(layers: list[pb.PublishRequest], field: str) -> str:
    for layer in layers:
        value: str = getattr(layer, field)
        if value:
            return value
    return ""


def _first_bytes(layers: list[pb.PublishRequest]) -> bytes:
    for layer in layers:
        if layer.payload:
            return layer.payload
    return b""


def _batch_response(results: list[PublishResult | Exception]) -> pb.PublishResponse:
    """One result per message; the top-level fields echo the last success."""
    out = pb.PublishResponse()
    failed = 0
    for result in results:
        if isinstance(result, Exception):
            failed += 1
            out.results.append(pb.PublishResponse(error=str(result)))
            continue
        item = result.to_proto()
        out.results.append(item)
        out.sequence, out.acked_at, out.stream = item.sequence, item.acked_at, item.stream
    if failed:
        out.error = f"{failed} of {len(results)} messages failed; see results[].error"
    return out


class ConsumeStep(Step[pb.ConsumeStepConfig, pb.ConsumeRequest, pb.ConsumeResponse]):
    type_name = CONSUME_STEP

    async def _run(self, cfg: pb.ConsumeStepConfig, req: pb.ConsumeRequest) -> pb.ConsumeResponse:
        durable = cfg.consumer or req.consumer
        if not durable:
            raise RequestError(
                self._where("consumer"),
                "is required",
                fix="set consumer to the durable name of an eventbus.consumer module",
            )
        registered = self.bus.consumer_config(durable)
        if registered is None:
            raise NotFoundError(
                f'{self._where("consumer")}: consumer "{durable}" not registered; '
                f'add an eventbus.consumer module with name: "{durable}"'
            )
        ref = cfg.broker_ref or req.broker_ref or registered.broker_ref
        provider = await self.bus.ready(ref)
        wait = (
            duration_seconds(cfg.max_wait)
            or duration_seconds(req.max_wait)
            or DEFAULT_CONSUME_MAX_WAIT
        )
        size = batch_size(cfg.batch_size or req.batch_size)
        deliveries = await provider.fetch(registered.stream_name, durable, size, wait)
        return pb.ConsumeResponse(messages=[d.to_proto() for d in deliveries])


class AckStep(Step[pb.AckStepConfig, pb.AckRequest, pb.AckResponse]):
    type_name = ACK_STEP

    async def _run(self, cfg: pb.AckStepConfig, req: pb.AckRequest) -> pb.AckResponse:
        tokens, from_input = _ack_tokens(cfg, req)
        if from_input:
            # The input's own token, in a trigger pipeline after an empty pull, is the
            # message the trigger delivered: settling it here would let a later failing
            # step lose it (the trigger's nak comes after this ack). The trigger settles
            # its own message; only a token in the step config overrides that.
            held = [t for t in tokens if self.bus.held_by_trigger(t)]
            if held:
                log.warning(
                    "%s: not settling the message its trigger delivered (the trigger "
                    "settles it after the pipeline); name a token in the step config "
                    "to settle it here",
                    self._where("ack_token"),
                    extra={"event": "ack_step.skipped_trigger_message", "step": self.name},
                )
                tokens = [t for t in tokens if t not in held]
                if not tokens:
                    return pb.AckResponse(count=0)
        if not tokens:
            raise RequestError(
                self._where("ack_token"),
                "is required",
                fix=(
                    "pass the ack_token of a consumed message (or ack_tokens for many), "
                    "or run a step.eventbus.consume before this step (its messages are "
                    "settled); skip the step with if: when the consume found nothing"
                ),
            )
        _check_batch(len(tokens), self._where("ack_tokens"))
        action = AckAction(cfg.action or req.action or pb.ACK_ACTION_ACK)
        delay = duration_seconds(cfg.delay) or duration_seconds(req.delay) or None
        provider = await self.bus.ready(cfg.broker_ref or req.broker_ref)
        await provider.settle(tokens, action, delay)
        await provider.confirm()  # the step answers once the broker has the acks
        return pb.AckResponse(count=len(tokens))


def _ack_tokens(cfg: pb.AckStepConfig, req: pb.AckRequest) -> tuple[list[str], bool]:
    """The tokens to settle, and whether they are the input's own: the config's; else
    the input's ``messages`` (what a consume step left in the pipeline's data); else the
    input's ``ack_token``/``ack_tokens``.

    ``messages`` comes before the input's own token: in a trigger pipeline that token is
    the triggering message's, which the trigger settles itself after the pipeline.
    """
    tokens = [t for t in [cfg.ack_token, *cfg.ack_tokens] if t]
    if not tokens:
        tokens = [m.ack_token for m in req.messages if m.ack_token]
    if not tokens:
        return [t for t in [req.ack_token, *req.ack_tokens] if t], True
    return tokens, False


STEP_CLASSES: dict[str, type[Step[Any, Any, Any]]] = {
    PUBLISH_STEP: PublishStep,
    CONSUME_STEP: ConsumeStep,
    ACK_STEP: AckStep,
}


def create_step(
    bus: EventBus, type_name: str, name: str, config: Any = None
) -> Step[Any, Any, Any]:
    """Build a step; ``config`` may be a Mapping, Struct, JSON text, the typed message or None."""
    cls = STEP_CLASSES.get(type_name)
    if cls is None:
        raise ConfigError(
            "step type",
            "unknown step type",
            value=type_name,
            fix=f"use one of: {', '.join(STEP_CLASSES)}",
        )
    config_type = capabilities.step(type_name).config
    if isinstance(config, config_type):
        typed = config
    else:
        typed = decode(config_type, config, setting=f'{type_name} "{name}"')
    return cls(bus, name, typed)
