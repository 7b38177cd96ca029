"""The provider interface: what a broker runtime must do for modules, steps and triggers.

A provider owns one connection (or pool) to one broker. Everything above it
(modules, steps, the subscribe loop, the plugin) talks only to this interface,
so NATS, pgchannel, Kafka and the in-memory double are interchangeable. Providers are
async, safe to call concurrently, and raise only :mod:`workflow_eventbus.core.errors`.

The subscribe loop is not a provider method: it is built once, generically, on
``fetch`` and ``settle`` (see :mod:`workflow_eventbus.engine.subscriber`).

Abilities not every provider has are capabilities: a mixin the provider class
inherits (:class:`HasDeadLetters`, :class:`HasPending`) plus the matching
:class:`Feature` in its ``features``. Callers ask
:func:`workflow_eventbus.providers.capabilities.capability` for one.

A provider whose connection can drop and come back says so through
:meth:`Provider.report_state`; whoever owns the provider (the broker module)
sets :attr:`Provider.state_listener` to hear about it.
"""

from __future__ import annotations

import abc
import enum
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from .._proto import eventbus_pb2 as pb
from ..core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ..core.defaults import DEFAULT_DEAD_LETTER_LIMIT, MAX_BATCH
from ..core.errors import redact

StateListener = Callable[[bool, str], None]
"""Called with ``(up, reason)`` when a provider's connection goes down or comes back;
``reason`` says why it went down (redacted), empty when it came back."""


class AckAction(enum.IntEnum):
    """What to do with a delivered message (numbers match ``pb.AckAction``)."""

    ACK = pb.ACK_ACTION_ACK
    NAK = pb.ACK_ACTION_NAK
    TERM = pb.ACK_ACTION_TERM
    IN_PROGRESS = pb.ACK_ACTION_IN_PROGRESS


class Feature(enum.Enum):
    """Optional abilities; the conformance suite skips what a provider lacks."""

    RESTART = "restart"  # survives a broker restart mid-run
    DEDUP = "dedup"  # msg_id deduplication within a window
    NAK_DELAY = "nak_delay"
    PERSISTENT = "persistent"  # messages survive the provider process
    DEAD_LETTERS = "dead_letters"  # HasDeadLetters: list and remove dead letters
    PENDING = "pending"  # HasPending: undelivered / unacknowledged counts
    STATUS = "status"  # HasStatus: streams and consumers with their counts
    EPHEMERAL_CONSUMERS = "ephemeral_consumers"  # HasEphemeralConsumers: temporary readers
    ADMIN = "admin"  # HasAdmin: compare live streams/consumers with a config, delete them


@dataclass(slots=True)
class OutboundMessage:
    subject: str
    payload: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str = ""
    msg_id: str = ""


@dataclass(slots=True)
class PublishResult:
    stream: str
    sequence: int
    acked_at: datetime
    duplicate: bool = False

    def to_proto(self) -> pb.PublishResponse:
        return pb.PublishResponse(
            sequence=str(self.sequence),
            acked_at=rfc3339(self.acked_at),
            duplicate=self.duplicate,
            stream=self.stream,
        )


@dataclass(slots=True)
class Delivery:
    """One message handed to a consumer, with the token that settles it."""

    stream: str
    consumer: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    sequence: int
    published_at: datetime
    delivery_count: int
    ack_token: str

    def to_proto(self) -> pb.Message:
        message = pb.Message(
            subject=self.subject,
            payload=self.payload,
            sequence=str(self.sequence),
            published_at=rfc3339(self.published_at),
            ack_token=self.ack_token,
            delivery_count=self.delivery_count,
            stream=self.stream,
            consumer=self.consumer,
        )
        if self.headers:  # an empty map costs as much as a full one to set
            message.headers.update(self.headers)
        return message


def rfc3339(moment: datetime) -> str:
    """UTC RFC 3339 with second precision, as the Go plugin renders times."""
    return _utc_second(math.floor(moment.timestamp()))


@functools.lru_cache(maxsize=256)
def _utc_second(epoch_second: int) -> str:
    # Called per delivered message; consecutive messages share their second.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_second))


def batch_size(requested: int) -> int:
    """Go-compatible cap: <= 0 means 1, above 1000 means 1000."""
    return 1 if requested <= 0 else min(requested, MAX_BATCH)


class Provider(abc.ABC):
    """A connection to one broker. Create, ``connect()``, use, ``close()``."""

    name: str = ""
    features: frozenset[Feature] = frozenset()

    def __init__(self, cluster: pb.ClusterConfig, url: str, *, broker_name: str) -> None:
        self.cluster = cluster
        self.url = url
        self.broker_name = broker_name
        self.log = logging.getLogger(f"workflow_eventbus.{self.name or 'provider'}")
        # Told about connection changes (report_state); set by the provider's owner.
        self.state_listener: StateListener | None = None
        self._reported_up: bool | None = None  # what report_state last passed on

    def report_state(self, up: bool, reason: str = "") -> None:
        """The connection went down (``up`` False, with ``reason``) or came back.

        Only changes reach :attr:`state_listener`: a repeat of the last state is
        dropped. Safe to call from connection callbacks: it never raises (a failing
        listener is logged) and never awaits."""
        if up == self._reported_up:
            return
        self._reported_up = up
        listener = self.state_listener
        if listener is None:
            return
        try:
            listener(up, redact(reason))
        except Exception:
            self.log.exception("broker %s: connection state listener failed", self.broker_name)

    @abc.abstractmethod
    async def connect(self, timeout: float) -> None:
        """Open the connection, waiting at most ``timeout`` seconds for the broker.

        Raises BrokerUnavailableError (never with a password in its text)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close; idempotent and safe before connect."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True while the connection is usable (reconnecting counts as False)."""

    @abc.abstractmethod
    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        """Create the stream, or update it to match ``cfg``; idempotent."""

    @abc.abstractmethod
    async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None:
        """Create the durable consumer ``cfg.name`` on ``cfg.stream_name``; idempotent.

        An existing consumer whose immutable settings differ raises ConflictError
        naming the setting and both values; its position is never reset."""

    @abc.abstractmethod
    async def publish(self, msg: OutboundMessage) -> PublishResult:
        """Publish one message and wait for the broker's acknowledgement."""

    async def publish_many(
        self, msgs: Sequence[OutboundMessage]
    ) -> list[PublishResult | Exception]:
        """Publish many messages, pipelined; one result (or error) per message, in order.

        The default publishes one at a time; providers override it to pipeline."""
        results: list[PublishResult | Exception] = []
        for msg in msgs:
            try:
                results.append(await self.publish(msg))
            except Exception as exc:  # reported per message
                results.append(exc)
        return results

    @abc.abstractmethod
    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        """Pull up to ``batch`` messages, waiting at most ``max_wait`` seconds.

        Returns an empty list on timeout. Messages stay unacknowledged until
        ``settle``; after the consumer's ack wait they are delivered again with
        a higher delivery count."""

    @abc.abstractmethod
    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        """Ack, nak (optionally after ``delay`` seconds), term or mark in progress."""

    async def confirm(self) -> None:
        """Return once every settle so far has reached the broker.

        ``settle`` may hand acks to the connection without waiting (NATS); callers
        that answer someone after settling (the ack step) call this first. Providers
        whose ``settle`` already waits need nothing here."""
        return None


# ---- optional capabilities ----


class DeadLetterStore(abc.ABC):
    """Reads a dead-letter stream without consuming it; removes single entries."""

    def __init__(self, dlq_stream: str = DEAD_LETTER_STREAM) -> None:
        self.dlq_stream = dlq_stream

    @abc.abstractmethod
    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_DEAD_LETTER_LIMIT
    ) -> list[DeadLetter]:
        """Oldest first, at most ``limit``, filtered by the source stream/consumer."""

    @abc.abstractmethod
    async def remove(self, letter: DeadLetter) -> None:
        """Delete the entry from the dead-letter stream (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the store holds of its own; idempotent."""


class ProviderCapability(abc.ABC):
    """Base of the capability mixins; ``feature`` is what a class declaring it lists."""

    feature: ClassVar[Feature]
    summary: ClassVar[str]


class HasDeadLetters(ProviderCapability):
    """The provider can read and remove what the subscribe loop dead-lettered."""

    feature = Feature.DEAD_LETTERS
    summary = "listing and removing dead letters (dlq list / replay)"

    @abc.abstractmethod
    async def dead_letters(self, dlq_stream: str = DEAD_LETTER_STREAM) -> DeadLetterStore:
        """A store over ``dlq_stream`` on this provider's broker; close it after use."""


class HasPending(ProviderCapability):
    """The provider can count what a durable consumer still has to do."""

    feature = Feature.PENDING
    summary = "counting pending messages of a consumer"

    @abc.abstractmethod
    async def pending(self, stream: str, consumer: str) -> tuple[int, int]:
        """(messages not yet delivered, delivered but unacknowledged) of the consumer.

        Raises NotFoundError when the stream or consumer does not exist."""


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream as the broker reports it now (``status``)."""

    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits", "interest" or "workqueue"
    messages: int  # stored now
    bytes: int  # payload and subject bytes stored (the broker's own measure)
    first_sequence: int  # 0 when empty
    last_sequence: int  # JetStream: the newest ever assigned; pgchannel: the newest stored
    consumers: int
    last_published: datetime | None  # when the newest stored message was published


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """One consumer of a stream as the broker reports it now (``status``)."""

    stream: str
    name: str
    filter_subject: str  # "" = every subject of the stream
    pending: int  # matching messages not delivered yet
    ack_pending: int  # delivered, not acknowledged yet
    redelivered: int  # of those, delivered more than once
    last_active: datetime | None  # the last delivery or acknowledgement the broker knows of


class HasStatus(ProviderCapability):
    """The provider can report every stream and consumer with its counts."""

    feature = Feature.STATUS
    summary = "reporting streams and consumers with their counts (status)"

    @abc.abstractmethod
    async def stream_status(self) -> list[StreamStatus]:
        """Every stream on the broker, by name."""

    @abc.abstractmethod
    async def consumer_status(self, stream: str) -> list[ConsumerStatus]:
        """Every consumer of ``stream``, by name; NotFoundError when the stream is missing."""


"""Names of ephemeral consumers start with this (then 16 hex digits)."""


class HasEphemeralConsumers(ProviderCapability):
    """The provider can make a temporary consumer that is removed after use.

    The consumer is read like a durable one (``fetch``, ``settle``) by its
    returned name. Whoever creates it deletes it; should that never happen (the
    process was killed), the broker or the next creation removes it once it was
    idle for ``idle`` seconds, see each provider's docs."""

    feature = Feature.EPHEMERAL_CONSUMERS
    summary = "temporary consumers that are removed after use (tail)"

    @abc.abstractmethod
    async def create_ephemeral(
        self,
        stream: str,
        filter_subject: str,
        *,
        idle: float,
        from_start: bool = False,
        last: int = 0,
    ) -> str:
        """A new consumer of ``stream`` for ``filter_subject`` ("" = all); its name.

        It delivers what is published from now on; with ``from_start`` every stored
        message first, with ``last`` > 0 the newest ``last`` stored matching ones.
        Refuses a work-queue stream (a reader there would take messages away)."""

    @abc.abstractmethod
    async def keep_ephemeral(self, stream: str, name: str) -> None:
        """Tell the broker the consumer is still in use (call at least every ``idle``/2)."""

    @abc.abstractmethod
    async def delete_ephemeral(self, stream: str, name: str) -> None:
        """Remove the consumer and what it holds; idempotent."""


@dataclass(frozen=True, slots=True)
class SettingDrift:
    """One setting of a live stream or consumer that differs from its config."""

    setting: str  # the config field, e.g. "max_age"
    current: str  # as the broker reports it, in the config's units
    desired: str
    immutable: bool  # the broker cannot change it in place (delete and recreate)


class HasAdmin(ProviderCapability):
    """The provider can compare a live stream or consumer with a config and delete it
    (the IaC provider's read, diff and delete)."""

    feature = Feature.ADMIN
    summary = "comparing live streams and consumers with their config and deleting them (IaC)"

    @abc.abstractmethod
    async def stream_drift(self, cfg: pb.StreamConfig) -> list[SettingDrift] | None:
        """Settings of the live stream ``cfg.name`` that differ from ``cfg``; None when
        the stream does not exist."""

    @abc.abstractmethod
    async def consumer_drift(self, cfg: pb.ConsumerConfig) -> list[SettingDrift] | None:
        """Like ``stream_drift`` for the durable ``cfg.name`` of ``cfg.stream_name``;
        None when the consumer (or its stream) does not exist."""

    @abc.abstractmethod
    async def delete_stream(self, name: str) -> bool:
        """Delete the stream and its messages; False when it did not exist."""

    @abc.abstractmethod
    async def delete_consumer(self, stream: str, name: str) -> bool:
        """Delete the durable consumer; False when it (or its stream) did not exist."""


CAPABILITIES: tuple[type[ProviderCapability], ...] = (
    HasDeadLetters,
    HasPending,
    HasStatus,
    HasEphemeralConsumers,
    HasAdmin,
)
