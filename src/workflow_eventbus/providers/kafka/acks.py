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


class PartitionAcks:
    """The offsets of one partition taken and not yet finished, and what to commit."""

    __slots__ = ("_heap", "_open", "committed", "next_offset")

    def __init__(self, committed: int = -1) -> None:
        self.committed = committed  # offset last committed; -1: nothing yet
        self.next_offset = -1  # one past the highest offset taken; -1: none taken yet
        self._open: set[int] = set()  # taken, not finished
        self._heap: list[int] = []  # the open offsets (and finished ones, removed lazily)

    def take(self, offset: int) -> None:
        """``offset`` was read from Kafka and is now this process's to finish."""
        if offset in self._open or offset < self.next_offset:
            return  # read twice (a seek back): still one open entry
        self._open.add(offset)
        heapq.heappush(self._heap, offset)
        self.next_offset = offset + 1

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

    def pending_commit(self) -> int | None:
        """The commit point when it moved past the last commit, else None."""
        point = self.commit_point()
        return point if point > self.committed and point >= 0 else None

    def committed_at(self, offset: int) -> None:
        self.committed = max(self.committed, offset)


# The delivery counts of a partition's unfinished records travel in the commit's
# metadata string (the broker keeps up to offset.metadata.max.bytes, 4096 by
# default): "<offset>:<count>,..." for the oldest MAX_COUNTS records delivered at
# least once. A new owner of the partition (after a crash or a rebalance) goes on
# counting from there, so max_deliver holds across processes.
MAX_COUNTS = 200


def encode_counts(counts: dict[int, int]) -> str:
    kept = sorted(counts.items())[:MAX_COUNTS]
    return ",".join(f"{offset}:{count}" for offset, count in kept)


def decode_counts(text: str) -> dict[int, int]:
    """The counts of :func:`encode_counts`; what is not ours (other tools' metadata) is ignored."""
    counts: dict[int, int] = {}
    for item in text.split(","):
        offset, sep, count = item.partition(":")
        if sep and offset.isdigit() and count.isdigit():
            counts[int(offset)] = int(count)
    return counts
