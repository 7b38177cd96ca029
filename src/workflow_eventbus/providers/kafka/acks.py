"""Per-message acks on top of Kafka's one committed offset per partition (pure).

Kafka remembers, per consumer group and partition, one offset: where the next
reader starts. The bus acks messages one by one and out of order, so each
partition keeps the offsets this process took from Kafka and has not finished
yet; only the prefix before the oldest unfinished one is committed. A message
not acked (nor terminated) is therefore read again after a crash or a
rebalance, never skipped; what was acked after it may be read again too (the
price of at-least-once on a log).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


class PartitionAcks:
    """The offsets of one partition taken and not yet finished, and what to commit."""

    __slots__ = ("_heap", "_open", "committed", "next_offset")

    def __init__(self, committed: int = -1) -> None:
        self.committed = committed  # offset last committed; -1: nothing yet
        self.next_offset = -1  # one past the highest offset taken; -1: none taken yet
        self._open: set[int] = set()  # taken, not finished
        self._heap: list[int] = []  # the open offsets (and finished ones, removed lazily)

    def take(self, offset: int) -> bool:
        """``offset`` was read from Kafka and is now this process's to finish; False
        when it already was (read twice after a seek back: still one open entry)."""
        if offset in self._open or offset < self.next_offset:
            return False
        self._open.add(offset)
        heapq.heappush(self._heap, offset)
        self.next_offset = offset + 1
        return True

    def finish(self, offset: int) -> bool:
        """Acked, terminated or filtered out; False when it was not open."""
        if offset not in self._open:
            return False
        self._open.discard(offset)
        return True

    def is_open(self, offset: int) -> bool:
        return offset in self._open

    @property
    def open_count(self) -> int:
        return len(self._open)

    def commit_point(self) -> int:
        """The offset to commit: the oldest open one, or one past the last taken.

        -1 when nothing was taken yet (nothing to commit)."""
        while self._heap and self._heap[0] not in self._open:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        return self.next_offset

    def finished_runs(self) -> list[tuple[int, int]]:
        """The runs ``[start, end)`` of offsets taken and finished after the commit point."""
        point = self.commit_point()
        runs = []
        start = point
        for offset in sorted(self._open):
            if offset > start:
                runs.append((start, offset))
            start = offset + 1
        if self.next_offset > start:
            runs.append((start, self.next_offset))
        return runs

    def pending_commit(self) -> int | None:
        """The commit point when it moved past the last commit, else None."""
        point = self.commit_point()
        return point if point > self.committed and point >= 0 else None

    def committed_at(self, offset: int) -> None:
        self.committed = max(self.committed, offset)


# What a partition's next owner needs beyond the committed offset travels in the
# commit's metadata string (the broker keeps up to offset.metadata.max.bytes, 4096
# bytes by default): "<offset>:<count>[:<due>]" for the oldest unfinished records
# delivered at least once (<due>: the wall-clock millisecond a nak'd record is due
# again), then "<start>-<end>" for runs of records finished after the oldest
# unfinished one. A new owner (after a crash or a rebalance) goes on counting, keeps
# the nak's delay and skips what was acked, so max_deliver, the backoff and "an acked
# message is not delivered again" hold across processes, within that size.
MAX_COUNTS = 200
MAX_METADATA = 4000  # characters, under Kafka's default limit of 4096 bytes

Mark = tuple[int, int]  # (delivery count, due wall-clock ms or 0)


@dataclass(slots=True)
class Resume:
    """What the metadata of a commit tells the partition's next owner."""

    marks: dict[int, Mark] = field(default_factory=dict)
    finished: list[tuple[int, int]] = field(default_factory=list)  # runs [start, end)

    def is_finished(self, offset: int) -> bool:
        return any(start <= offset < end for start, end in self.finished)


def encode_resume(marks: dict[int, Mark], finished: list[tuple[int, int]]) -> str:
    parts = [f"{o}:{c}:{d}" if d else f"{o}:{c}" for o, (c, d) in sorted(marks.items())]
    parts = parts[:MAX_COUNTS] + [f"{a}-{b}" for a, b in sorted(finished)]
    kept: list[str] = []
    size = 0
    for part in parts:
        size += len(part) + 1
        if size > MAX_METADATA:
            break
        kept.append(part)
    return ",".join(kept)


def decode_resume(text: str) -> Resume:
    """The contents of :func:`encode_resume`; what is not ours (other tools' metadata) is
    ignored."""
    resume = Resume()
    for item in text.split(","):
        start, dash, end = item.partition("-")
        if dash and start.isdigit() and end.isdigit():
            resume.finished.append((int(start), int(end)))
            continue
        fields = item.split(":")
        if 2 <= len(fields) <= 3 and all(f.isdigit() for f in fields):
            due = int(fields[2]) if len(fields) == 3 else 0
            resume.marks[int(fields[0])] = (int(fields[1]), due)
    return resume
