"""In-process provider: a unit-test double with JetStream-like semantics.

Never a replacement for the real-server tests. Providers created with the same
URL (``memory://<name>``) share one in-memory broker, so competing consumers can
be exercised; the broker lives in a registry owned by the MemoryBroker class and
is dropped with :meth:`MemoryBroker.reset`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from .._proto import eventbus_pb2 as pb
from ..core.config import duration_seconds
from ..core.deadletter import DEAD_LETTER_STREAM, DeadLetter
from ..core.defaults import DEFAULT_ACK_WAIT, DEFAULT_DEAD_LETTER_LIMIT, DEFAULT_DUPLICATE_WINDOW
from ..core.errors import BrokerUnavailableError, ConflictError, NotFoundError, RequestError
from ..core.headers import CORRELATION_HEADER
from ..core.subjects import filter_matches, subject_matches
from .base import (
    AckAction,
    DeadLetterStore,
    Delivery,
    Feature,
    HasDeadLetters,
    HasPending,
    OutboundMessage,
    Provider,
    PublishResult,
    batch_size,
)


@dataclass(slots=True)
class _Stored:
    seq: int
    subject: str
    payload: bytes
    headers: dict[str, str]
    at: datetime


@dataclass
class _Stream:
    cfg: pb.StreamConfig
    messages: dict[int, _Stored] = field(default_factory=dict)
    dedup: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class _Lease:
    deadline: float
    count: int
    generation: int


@dataclass
class _Consumer:
    cfg: pb.ConsumerConfig
    ack_wait: float
    cursor: int  # last sequence handed out for the first time
    leases: dict[int, _Lease] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)


class MemoryBroker:
    """The shared state behind every MemoryProvider with the same URL."""

    _registry: dict[str, MemoryBroker] = {}

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.consumers: dict[tuple[str, str], _Consumer] = {}
        self.seq = itertools.count(1)
        self.changed = asyncio.Condition()
        self.generation = itertools.count(1)

    @classmethod
    def named(cls, url: str) -> MemoryBroker:
        return cls._registry.setdefault(url, cls())

    @classmethod
    def reset(cls) -> None:
        cls._registry.clear()


class MemoryProvider(Provider, HasPending, HasDeadLetters):
    name = "memory"
    features = frozenset({Feature.DEDUP, Feature.NAK_DELAY, Feature.DEAD_LETTERS, Feature.PENDING})

    def __init__(self, cluster: pb.ClusterConfig, url: str, *, broker_name: str) -> None:
        super().__init__(cluster, url or "memory://default", broker_name=broker_name)
        self._broker: MemoryBroker | None = None

    async def connect(self, timeout: float) -> None:
        self._broker = MemoryBroker.named(self.url)

    async def close(self) -> None:
        self._broker = None

    @property
    def connected(self) -> bool:
        return self._broker is not None

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise BrokerUnavailableError(
                f'memory broker "{self.broker_name}": not connected; start the broker module first'
            )
        return self._broker

    async def ensure_stream(self, cfg: pb.StreamConfig) -> None:
        existing = self.broker.streams.get(cfg.name)
        if existing is None:
            self.broker.streams[cfg.name] = _Stream(cfg=_copy(cfg))
        else:
            existing.cfg = _copy(cfg)

    async def ensure_consumer(self, cfg: pb.ConsumerConfig) -> None:
        stream = self._stream(cfg.stream_name)
        key = (cfg.stream_name, cfg.name)
        ack_wait = duration_seconds(cfg.ack_wait) or duration_seconds(stream.cfg.ack_wait)
        current = self.broker.consumers.get(key)
        if current is not None:
            _check_immutable(current.cfg, cfg)
            current.cfg, current.ack_wait = _copy(cfg), ack_wait or DEFAULT_ACK_WAIT
            return
        cursor = 0
        if cfg.deliver_policy == pb.DELIVER_POLICY_NEW:
            cursor = max(stream.messages, default=0)
        elif cfg.deliver_policy == pb.DELIVER_POLICY_LAST:
            cursor = max(max(stream.messages, default=0) - 1, 0)
        elif cfg.deliver_policy == pb.DELIVER_POLICY_BY_START_SEQUENCE:
            cursor = max(int(cfg.opt_start_seq) - 1, 0)
        self.broker.consumers[key] = _Consumer(_copy(cfg), ack_wait or DEFAULT_ACK_WAIT, cursor)

    async def publish(self, msg: OutboundMessage) -> PublishResult:
        broker = self.broker
        stream = self._stream_for(msg.subject)
        now = time.monotonic()
        if msg.msg_id:
            window = duration_seconds(stream.cfg.duplicate_window) or DEFAULT_DUPLICATE_WINDOW
            seen = stream.dedup.get(msg.msg_id)
            if seen is not None and now - seen[1] < window:
                return PublishResult(stream.cfg.name, seen[0], datetime.now(UTC), duplicate=True)
        headers = dict(msg.headers)
        if msg.correlation_id:
            headers[CORRELATION_HEADER] = msg.correlation_id
        seq = next(broker.seq)
        stream.messages[seq] = _Stored(seq, msg.subject, msg.payload, headers, datetime.now(UTC))
        if msg.msg_id:
            stream.dedup[msg.msg_id] = (seq, now)
        async with broker.changed:
            broker.changed.notify_all()
        return PublishResult(stream.cfg.name, seq, datetime.now(UTC))

    async def fetch(
        self, stream: str, consumer: str, batch: int, max_wait: float
    ) -> list[Delivery]:
        broker = self.broker
        state = self._consumer(stream, consumer)
        deadline = time.monotonic() + max(max_wait, 0.0)
        while True:
            out = self._take(stream, state, batch_size(batch))
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            next_due = min((lease.deadline for lease in state.leases.values()), default=deadline)
            wait = max(min(remaining, next_due - time.monotonic()), 0.001)
            async with broker.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(broker.changed.wait(), wait)

    def _take(self, stream_name: str, state: _Consumer, limit: int) -> list[Delivery]:
        stream = self._stream(stream_name)
        now = time.monotonic()
        picked: list[int] = [
            seq for seq, lease in sorted(state.leases.items()) if lease.deadline <= now
        ][:limit]
        for seq in sorted(stream.messages):
            if len(picked) >= limit:
                break
            if seq <= state.cursor:
                continue
            state.cursor = seq
            if self._wanted(state, stream.messages[seq]):
                picked.append(seq)
        out = []
        for seq in sorted(picked):
            count = state.counts.get(seq, 0) + 1
            max_deliver = state.cfg.max_deliver
            if max_deliver > 0 and count > max_deliver:
                state.leases.pop(seq, None)
                continue
            state.counts[seq] = count
            gen = next(self.broker.generation)
            state.leases[seq] = _Lease(now + state.ack_wait, count, gen)
            out.append(self._delivery(stream_name, state, stream.messages[seq], count, gen))
        return out

    @staticmethod
    def _wanted(state: _Consumer, stored: _Stored) -> bool:
        return filter_matches(state.cfg.filter_subject, stored.subject)

    def _delivery(
        self, stream: str, state: _Consumer, stored: _Stored, count: int, gen: int
    ) -> Delivery:
        token = f"{stream}:{state.cfg.name}:{stored.seq}:{gen}"
        return Delivery(
            stream=stream,
            consumer=state.cfg.name,
            subject=stored.subject,
            payload=stored.payload,
            headers=dict(stored.headers),
            sequence=stored.seq,
            published_at=stored.at,
            delivery_count=count,
            ack_token=token,
        )

    async def settle(
        self, tokens: Sequence[str], action: AckAction, delay: float | None = None
    ) -> None:
        broker = self.broker
        for token in tokens:
            state, seq, gen = self._parse_token(token)
            lease = state.leases.get(seq)
            if lease is None or lease.generation != gen:
                continue  # already settled or redelivered since: like a late JetStream ack
            if action in (AckAction.ACK, AckAction.TERM):
                del state.leases[seq]
                state.done.add(seq)
            elif action == AckAction.NAK:
                lease.deadline = time.monotonic() + (delay or 0.0)
            else:
                lease.deadline = time.monotonic() + state.ack_wait
        async with broker.changed:
            broker.changed.notify_all()

    async def pending(self, stream: str, consumer: str) -> tuple[int, int]:
        state = self._consumer(stream, consumer)
        stored = self._stream(stream).messages
        waiting = sum(
            1 for seq, m in stored.items() if seq > state.cursor and self._wanted(state, m)
        )
        return waiting, len(state.leases)

    async def dead_letters(self, dlq_stream: str = DEAD_LETTER_STREAM) -> MemoryDeadLetters:
        """A store over ``dlq_stream`` of the shared in-memory broker."""
        self.broker  # noqa: B018 - raises when not connected
        return MemoryDeadLetters(lambda: self.broker, dlq_stream)

    def _parse_token(self, token: str) -> tuple[_Consumer, int, int]:
        parts = token.split(":")
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            raise RequestError(
                "ack_token",
                "malformed memory ack token",
                value=token,
                fix="pass the ack_token of a message this broker delivered",
            )
        return self._consumer(parts[0], parts[1]), int(parts[2]), int(parts[3])

    def _stream(self, name: str) -> _Stream:
        stream = self.broker.streams.get(name)
        if stream is None:
            raise NotFoundError(
                f'stream "{name}" not found; declare it with an eventbus.stream module'
            )
        return stream

    def _stream_for(self, subject: str) -> _Stream:
        for stream in self.broker.streams.values():
            if any(subject_matches(p, subject) for p in stream.cfg.subjects):
                return stream
        raise NotFoundError(
            f'no stream captures subject "{subject}"; add it to the subjects of an eventbus.stream'
        )

    def _consumer(self, stream: str, consumer: str) -> _Consumer:
        self._stream(stream)
        state = self.broker.consumers.get((stream, consumer))
        if state is None:
            raise NotFoundError(
                f'consumer "{consumer}" not found on stream "{stream}"; '
                "declare it with an eventbus.consumer module"
            )
        return state


class MemoryDeadLetters(DeadLetterStore):
    """The messages of the dead-letter stream in the shared broker, oldest first."""

    def __init__(self, broker: Callable[[], MemoryBroker], dlq_stream: str) -> None:
        super().__init__(dlq_stream)
        self._broker = broker

    async def list(
        self, *, stream: str = "", consumer: str = "", limit: int = DEFAULT_DEAD_LETTER_LIMIT
    ) -> list[DeadLetter]:
        found = self._broker().streams.get(self.dlq_stream)
        if found is None:
            return []  # nothing was dead-lettered yet
        out: list[DeadLetter] = []
        for seq, m in sorted(found.messages.items()):
            if len(out) >= limit:
                break
            letter = DeadLetter.parse(self.dlq_stream, seq, m.subject, m.headers, m.payload)
            if letter.matches(stream, consumer):
                out.append(letter)
        return out

    async def remove(self, letter: DeadLetter) -> None:
        broker = self._broker()
        found = broker.streams.get(letter.dlq_stream)
        if found is not None and found.messages.pop(letter.dlq_sequence, None) is not None:
            for (name, _), state in broker.consumers.items():
                if name == letter.dlq_stream:  # a lease on a removed message: drop it
                    state.leases.pop(letter.dlq_sequence, None)

    async def close(self) -> None:
        return None


# Settings a durable consumer cannot change once it exists (as on JetStream).
_IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time", "ack_policy")


def _check_immutable(old: pb.ConsumerConfig, new: pb.ConsumerConfig) -> None:
    for name in _IMMUTABLE:
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            raise ConflictError(
                f'memory consumer "{new.name}" on stream "{new.stream_name}": {name} is '
                f"{before!r} and cannot change to {after!r}; fix: set it back, or use a new "
                "durable name"
            )


_Cfg = TypeVar("_Cfg", pb.StreamConfig, pb.ConsumerConfig)


def _copy(msg: _Cfg) -> _Cfg:
    clone = type(msg)()
    clone.CopyFrom(msg)
    return clone
