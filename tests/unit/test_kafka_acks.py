"""The kafka provider's ack tracker: only the contiguous finished prefix is committed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workflow_eventbus.providers.kafka.acks import PartitionAcks


def test_nothing_taken_commits_nothing() -> None:
    acks = PartitionAcks()
    assert acks.commit_point() == -1
    assert acks.pending_commit() is None


def test_out_of_order_acks_commit_only_the_prefix() -> None:
    acks = PartitionAcks()
    for offset in (10, 11, 12, 13):
        acks.take(offset)
    assert acks.commit_point() == 10  # nothing finished: start again at the first one
    assert acks.finish(12) and acks.finish(13)
    assert acks.pending_commit() == 10  # 10 and 11 are open: 12 and 13 are not skipped past
    assert acks.finish(10)
    assert acks.pending_commit() == 11
    acks.committed_at(11)
    assert acks.pending_commit() is None
    assert acks.finish(11)
    assert acks.pending_commit() == 14  # everything finished: one past the last taken


def test_gaps_in_offsets_are_not_waited_for() -> None:
    # Compacted topics and transaction markers leave holes in the offsets.
    acks = PartitionAcks()
    acks.take(3)
    acks.take(7)
    acks.finish(3)
    assert acks.commit_point() == 7
    acks.finish(7)
    assert acks.commit_point() == 8


def test_finish_twice_or_unknown_is_refused() -> None:
    acks = PartitionAcks()
    acks.take(0)
    assert acks.finish(0)
    assert not acks.finish(0)
    assert not acks.finish(5)
    acks.take(0)  # read again after a seek back: not a second open entry
    assert acks.open_count == 0


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.randoms())
def test_commit_point_is_the_oldest_unfinished(finished: list[bool], rnd: object) -> None:
    acks = PartitionAcks()
    for offset in range(len(finished)):
        acks.take(offset)
    order = [o for o, done in enumerate(finished) if done]
    rnd.shuffle(order)  # type: ignore[attr-defined]
    for offset in order:
        acks.finish(offset)
    unfinished = [o for o, done in enumerate(finished) if not done]
    assert acks.commit_point() == (unfinished[0] if unfinished else len(finished))


def test_delivery_counts_round_trip_bounded_and_tolerant() -> None:
    from workflow_eventbus.providers.kafka.acks import MAX_COUNTS, decode_counts, encode_counts

    counts = {offset: (offset % 7 + 1, 0) for offset in range(MAX_COUNTS + 50)}
    text = encode_counts(counts)
    back = decode_counts(text)
    assert back == {o: c for o, c in counts.items() if o < MAX_COUNTS}  # the oldest are kept
    assert len(text) < 4096  # Kafka's default offset.metadata.max.bytes
    assert decode_counts("") == {} and decode_counts("written by another tool") == {}
    assert decode_counts("5:2,x:1,7:,8:1:1796000000000") == {5: (2, 0), 8: (1, 1796000000000)}


def test_delivery_marks_with_due_times_stay_under_the_metadata_limit() -> None:
    from workflow_eventbus.providers.kafka.acks import decode_counts, encode_counts

    big = {10**11 + o: (3, 1_796_000_000_000 + o) for o in range(300)}
    text = encode_counts(big)
    assert len(text) <= 4000
    kept = decode_counts(text)
    assert kept and all(big[o] == mark for o, mark in kept.items())
    assert sorted(kept) == sorted(big)[: len(kept)]  # the oldest first
