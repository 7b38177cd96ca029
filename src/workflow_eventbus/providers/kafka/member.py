"""One durable consumer in this process: a Kafka consumer-group member with leases.

Kafka hands each partition of the group's topics to one member; this member
turns the records of its partitions into bus deliveries:

- every delivery is a lease of ``ack_wait`` seconds, held here; a lease that runs
  out, or a nak (after its delay), delivers the record again from memory with
  the next delivery count; a record past ``max_deliver`` is dropped (finished);
- ack and term finish a record; the group's offset of a partition is committed
  up to the oldest unfinished record (``acks.PartitionAcks``), by a committer
  task shortly after, so nothing unfinished is ever skipped; the commit carries
  the delivery counts of the unfinished records (``acks.encode_counts``), which
  the partition's next owner continues from;
- records that do not match the consumer's filter are finished when read;
- a revoked partition (rebalance) first lets running deliveries finish (at most
  ``REVOKE_WAIT`` seconds), commits what is finished and forgets the rest, which
  its next owner reads again; tokens of it are stale from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ...core.errors import BrokerUnavailableError
from ...core.lifecycle import cancel_and_wait
from ...core.subjects import filter_matches
from ..base import AckAction, Delivery
from .acks import PartitionAcks, Resume, decode_resume, encode_resume
from .topics import Token, encode_sequence, group_id

REVOKE_WAIT = 10.0  # s a revoked partition waits for its running deliveries
MAX_POLL_INTERVAL_MS = 24 * 3600 * 1000  # how long a member may go without reading
POLL_SLICE = 0.25  # s one read from Kafka waits at most (then leases are looked at again)
COMMIT_RETRY = 0.5  # s between commits that failed
COUNT_TRIES = 5  # reads of the delivery counts after an assignment
COUNT_RETRY = 0.2  # s between them

Record = Any  # aiokafka's ConsumerRecord (untyped)


@dataclass(slots=True)
class _Lease:
    record: Record
    count: int  # delivery count of the current delivery
    deadline: float  # monotonic: redelivered after this
    running: bool  # False while a nak waits out its delay


@dataclass(frozen=True, slots=True)
class MemberConfig:
    stream: str
    consumer: str
    topics: dict[str, int]  # topic -> its id in sequences
    filter_subject: str
    ack_wait: float
    max_deliver: int
    max_ack_pending: int


class Member(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        cfg: MemberConfig,
        options: dict[str, Any],
        admin: AIOKafkaAdminClient,
        log: logging.Logger,
        *,
        start_at: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self._admin = admin
        # start_at: an ephemeral reader, no group: these partitions from these offsets,
        # nothing committed (see ephemeral.py).
        self._start_at = start_at
        self._group = group_id(cfg.stream, cfg.consumer) if start_at is None else None
        self._consumer = AIOKafkaConsumer(
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            rebalance_timeout_ms=int((REVOKE_WAIT + 20) * 1000),
            # Leases, not reads, tell whether work goes on: a member whose handlers run
            # long (or that holds max_ack_pending) does not read, and must stay a member.
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            fetch_max_wait_ms=int(POLL_SLICE * 1000),
            **options,
        )
        self._parts: dict[TopicPartition, PartitionAcks] = {}
        self._ready: deque[Record] = deque()  # read, matching, not delivered yet
        self._leases: dict[tuple[str, int, int], _Lease] = {}
        self._counts: dict[TopicPartition, Resume] = {}  # from the last commit
        self._counted: set[TopicPartition] = set()  # whose counts were read since assigned
        self._recount: set[TopicPartition] = set()  # delivery counts changed since
        self._changed = asyncio.Event()  # a settle happened: fetch looks again
        self._dirty = asyncio.Event()  # a commit point moved
        self._committed = asyncio.Event()  # nothing left to commit
        self._committed.set()
        self._read_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self.revoking: set[TopicPartition] = set()  # handed over, waiting for deliveries

    async def start(self) -> None:
        await self._consumer.start()
        if self._start_at is not None:
            self._consumer.assign(list(self._start_at))
            for tp, offset in self._start_at.items():
                self._consumer.seek(tp, offset)
                self._parts[tp] = PartitionAcks()
            return
        self._consumer.subscribe(sorted(self.cfg.topics), listener=self)
        self._committer = asyncio.create_task(
            self._commit_loop(), name=f"kafka commits {self.cfg.stream}/{self.cfg.consumer}"
        )

    async def close(self) -> None:
        self._closing = True
        if self._committer is not None:
            await cancel_and_wait(self._committer)
            self._committer = None
        with contextlib.suppress(KafkaError, BrokerUnavailableError):
            await self._commit_now()
        await self._consumer.stop()

    def reconfigure(self, cfg: MemberConfig) -> None:
        """New settings from now on; new topics are subscribed to (a rebalance)."""
        grew = set(cfg.topics) != set(self.cfg.topics)
        self.cfg = cfg
        if grew and self._start_at is None:
            self._consumer.subscribe(sorted(cfg.topics), listener=self)

    # ---- delivering ----

    async def fetch(self, limit: int, max_wait: float) -> list[Delivery]:
        deadline = time.monotonic() + max(max_wait, 0.0)
        while True:
            out = self._take(limit)
            now = time.monotonic()
            if out or now >= deadline:
                return out
            wait = min(deadline - now, POLL_SLICE)
            due = min((lease.deadline for lease in self._leases.values()), default=None)
            if due is not None:
                wait = max(min(wait, due - now), 0.001)
            if not self._ready and len(self._leases) < self._max_pending():
                await self._read(wait)
            else:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)

    def _max_pending(self) -> int:
        return self.cfg.max_ack_pending if self.cfg.max_ack_pending > 0 else 1 << 30

    async def _read(self, wait: float) -> None:
        async with self._read_lock:
            try:
                batches = await self._consumer.getmany(
                    timeout_ms=int(wait * 1000), max_records=max(self._max_pending(), 1)
                )
            except KafkaError as exc:
                raise BrokerUnavailableError(
                    f"kafka consumer {self.cfg.stream}/{self.cfg.consumer}: read failed: {exc}"
                ) from exc
        assigned = self._consumer.assignment()
        before = {tp: self._parts.get(tp) for tp in batches}
        unread = [tp for tp in batches if tp in assigned and tp not in self._counted]
        if unread:
            await self._load_counts(unread)  # may wait out a rebalance
        # Only partitions still ours, and not handed over and back meanwhile: the
        # records of one revoked (or assigned afresh) are read again from its commit.
        assigned = self._consumer.assignment()
        for tp, records in batches.items():
            acks = self._parts.get(tp)
            if tp not in assigned or acks is None or acks is not before[tp]:
                continue
            for record in records:
                if not acks.take(record.offset):
                    continue  # already ours
                subject = record.key.decode() if record.key else ""
                resume = self._counts.get(tp)
                if resume is not None and resume.is_finished(record.offset):
                    acks.finish(record.offset)  # acked before the last owner's commit
                    self._dirty.set()
                elif filter_matches(self.cfg.filter_subject, subject):
                    self._ready.append(record)
                else:
                    acks.finish(record.offset)
                    self._dirty.set()

    def _take(self, limit: int) -> list[Delivery]:
        now = time.monotonic()
        out: list[Delivery] = []
        expired = sorted(
            (key for key, lease in self._leases.items() if lease.deadline <= now),
            key=lambda k: (k[0], k[1], k[2]),
        )
        for key in expired:
            if len(out) >= limit:
                break
            lease = self._leases[key]
            if self.cfg.max_deliver > 0 and lease.count >= self.cfg.max_deliver:
                del self._leases[key]
                self._finish(key)
                continue
            lease.count += 1
            lease.deadline = now + self.cfg.ack_wait
            lease.running = True
            out.append(self._delivery(lease))
            self._recount.add(TopicPartition(key[0], key[1]))
        while self._ready and len(out) < limit and len(self._leases) < self._max_pending():
            record = self._ready.popleft()
            tp = TopicPartition(record.topic, record.partition)
            # A count from the commit: an earlier owner delivered it already. Past
            # max_deliver it is still handed out once, so the subscriber dead-letters
            # it rather than it vanishing unsettled.
            resume = self._counts.get(tp)
            before, due = resume.marks.pop(record.offset, (0, 0)) if resume else (0, 0)
            wait = due / 1000 - time.time()
            if before and wait > 0:  # nak'd by the last owner, not due yet: wait here
                lease = _Lease(record, before, now + wait, False)
                self._leases[(record.topic, record.partition, record.offset)] = lease
                continue
            lease = _Lease(record, before + 1, now + self.cfg.ack_wait, True)
            self._leases[(record.topic, record.partition, record.offset)] = lease
            out.append(self._delivery(lease))
            self._recount.add(tp)
        if out and self._group is not None:
            self._committed.clear()
            self._dirty.set()
        return out

    def _delivery(self, lease: _Lease) -> Delivery:
        record = lease.record
        token = Token(
            self.cfg.stream,
            self.cfg.consumer,
            record.topic,
            record.partition,
            record.offset,
            lease.count,
        )
        headers = {k: v.decode(errors="replace") for k, v in (record.headers or ())}
        return Delivery(
            stream=self.cfg.stream,
            consumer=self.cfg.consumer,
            subject=record.key.decode() if record.key else "",
            payload=record.value or b"",
            headers=headers,
            sequence=encode_sequence(
                self.cfg.topics.get(record.topic, 0), record.partition, record.offset
            ),
            published_at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
            delivery_count=lease.count,
            ack_token=token.text(),
        )

    # ---- settling ----

    def settle(self, token: Token, action: AckAction, delay: float | None) -> bool:
        """Apply one settle; False when the lease is not held here (stale token)."""
        key = (token.topic, token.partition, token.offset)
        lease = self._leases.get(key)
        if lease is None or lease.count != token.delivery:
            return False
        now = time.monotonic()
        if action in (AckAction.ACK, AckAction.TERM):
            del self._leases[key]
            self._finish(key)
        elif action == AckAction.NAK:
            lease.deadline = now + max(delay or 0.0, 0.0)
            lease.running = False
            if delay and self._group is not None:  # the due time goes with the next commit
                self._recount.add(TopicPartition(token.topic, token.partition))
                self._committed.clear()
                self._dirty.set()
        else:
            lease.deadline = now + self.cfg.ack_wait
        self._changed.set()
        return True

    def _finish(self, key: tuple[str, int, int]) -> None:
        acks = self._parts.get(TopicPartition(key[0], key[1]))
        if acks is not None and acks.finish(key[2]) and self._group is not None:
            self._recount.add(TopicPartition(key[0], key[1]))  # its run goes on record
            self._committed.clear()
            self._dirty.set()

    @property
    def held(self) -> int:
        return len(self._leases)

    @property
    def redelivered(self) -> int:
        """Leases held here of records delivered more than once."""
        return sum(1 for lease in self._leases.values() if lease.count > 1)

    def waiting(self) -> int:
        """Read from Kafka, matching, not delivered yet."""
        return len(self._ready)

    def owned(self) -> dict[TopicPartition, PartitionAcks]:
        return dict(self._parts)

    # ---- committing ----

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._commit_now()
            except (KafkaError, BrokerUnavailableError) as exc:
                self.log.debug("kafka commit failed, retrying: %s", exc)
                self._dirty.set()
                await asyncio.sleep(COMMIT_RETRY)

    def _counts_of(self, tp: TopicPartition, point: int) -> str:
        resume = self._counts.get(tp, Resume())
        counts = {o: c for o, c in resume.marks.items() if o >= point}
        mono, wall = time.monotonic(), time.time()
        for (topic, partition, offset), lease in self._leases.items():
            if (topic, partition) == tp and offset >= point:
                waiting = not lease.running and lease.deadline > mono
                due = int((wall + lease.deadline - mono) * 1000) if waiting else 0
                counts[offset] = (lease.count, due)
        acks = self._parts.get(tp)
        finished = acks.finished_runs() if acks is not None else []
        ahead = acks.next_offset if acks is not None else point
        # Runs the last owner finished that this one has not read yet stay on record.
        finished += [(max(a, ahead), b) for a, b in resume.finished if b > ahead]
        return encode_resume(counts, finished)

    async def _commit_now(self, only: set[TopicPartition] | None = None) -> None:
        if self._group is None:  # an ephemeral reader keeps no position on the broker
            self._committed.set()
            return
        offsets: dict[TopicPartition, tuple[int, str]] = {}
        assigned = self._consumer.assignment()  # Kafka refuses the whole commit otherwise
        for tp, acks in self._parts.items():
            if (only is not None and tp not in only) or tp not in assigned:
                continue
            point = acks.pending_commit()
            if point is None and tp in self._recount:
                point = acks.commit_point()
            if point is not None and point >= 0:
                offsets[tp] = (point, self._counts_of(tp, point))
        self._recount.difference_update(offsets)
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except BaseException:
                self._recount.update(offsets)
                raise
            for tp, (point, _) in offsets.items():
                owned = self._parts.get(tp)  # a rebalance may have taken it meanwhile
                if owned is not None:
                    owned.committed_at(point)
        if all(a.pending_commit() is None for a in self._parts.values()):
            self._committed.set()

    async def confirm(self, timeout: float, where: str = "kafka") -> None:
        """Wait until every finished record so far is committed.

        Raises BrokerUnavailableError when that takes longer than ``timeout`` (the
        broker's connect_timeout): the acks are not on the broker yet."""
        try:
            await asyncio.wait_for(self._committed.wait(), timeout)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"{where}: the acks of consumer {self.cfg.stream}/{self.cfg.consumer} were "
                f"not committed within connect_timeout ({timeout:g}s); check that the broker "
                "is reachable, or raise connect_timeout (they are committed once it is)"
            ) from exc

    # ---- rebalance listener (called by aiokafka's group coordinator) ----

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        if not gone:
            return
        self.revoking = gone
        self._ready = deque(r for r in self._ready if (r.topic, r.partition) not in gone)
        give_up = time.monotonic() + (0.0 if self._closing else REVOKE_WAIT)
        while time.monotonic() < give_up and any(
            lease.running and (key[0], key[1]) in gone for key, lease in self._leases.items()
        ):
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)
        try:
            await self._commit_now(only=gone)
        except KafkaError as exc:
            self.log.warning("kafka: commit on revoke failed (records will be read again): %s", exc)
        for key in [k for k in self._leases if (k[0], k[1]) in gone]:
            del self._leases[key]
        for tp in gone:
            self._parts.pop(tp, None)
            self._counts.pop(tp, None)
        self._counted.difference_update(gone)
        self._recount.difference_update(gone)
        self.revoking = set()
        self._changed.set()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            # Afresh: what an earlier assignment of it took is not ours any more (an
            # entry kept would skip its records below next_offset, then commit past them).
            self._parts[tp] = PartitionAcks()
        # Read again before the first record of each is taken (``_read``): the last
        # owner may have committed since. (aiokafka may fetch before this returns.)
        self._counted.difference_update(assigned)

    async def _load_counts(self, tps: list[TopicPartition]) -> None:
        """The delivery counts of ``tps`` from the group's last commit (retried while the
        coordinator settles after a rebalance; given up after COUNT_TRIES)."""
        if self._group is None:
            self._counted.update(tps)
            return
        for attempt in range(COUNT_TRIES):
            try:
                committed = await self._admin.list_consumer_group_offsets(
                    self._group, partitions=list(tps)
                )
                break
            except KafkaError as exc:
                if attempt == COUNT_TRIES - 1:
                    self.log.warning(
                        "kafka: delivery counts of %s not read (they restart at 1): %s",
                        self._group,
                        exc,
                    )
                    self._counted.update(tps)
                    return
                await asyncio.sleep(COUNT_RETRY)
        for tp in tps:
            found = committed.get(tp)
            self._counts[tp] = decode_resume(found.metadata if found else "")
        self._counted.update(tps)
