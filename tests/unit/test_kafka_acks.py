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


def test_resume_round_trips_bounded_and_tolerant() -> None:
    from workflow_eventbus.providers.kafka.acks import MAX_COUNTS, decode_resume, encode_resume

    marks = {offset: (offset % 7 + 1, 0) for offset in range(MAX_COUNTS + 50)}
    text = encode_resume(marks, [(400, 410)])
    back = decode_resume(text)
    assert back.marks == {o: c for o, c in marks.items() if o < MAX_COUNTS}  # the oldest
    assert back.finished == [(400, 410)] and back.is_finished(409) and not back.is_finished(410)
    assert len(text) < 4096  # Kafka's default offset.metadata.max.bytes
    assert decode_resume("").marks == {} and decode_resume("another tool's text").finished == []
    parsed = decode_resume("5:2,x:1,7:,8:1:1796000000000,9-12,a-b")
    assert parsed.marks == {5: (2, 0), 8: (1, 1796000000000)} and parsed.finished == [(9, 12)]


def test_resume_with_due_times_stays_under_the_metadata_limit() -> None:
    from workflow_eventbus.providers.kafka.acks import decode_resume, encode_resume

    big = {10**11 + o: (3, 1_796_000_000_000 + o) for o in range(300)}
    text = encode_resume(big, [(10**12, 10**12 + 5)])
    assert len(text) <= 4000
    kept = decode_resume(text).marks
    assert kept and all(big[o] == mark for o, mark in kept.items())
    assert sorted(kept) == sorted(big)[: len(kept)]  # the oldest first


def test_finished_runs_after_the_oldest_open_offset() -> None:
    acks = PartitionAcks()
    for offset in range(10):
        acks.take(offset)
    for offset in (0, 1, 3, 4, 5, 8, 9):
        acks.finish(offset)
    assert acks.commit_point() == 2
    assert acks.finished_runs() == [(3, 6), (8, 10)]  # 2, 6 and 7 are still open
    for offset in (2, 6, 7):
        acks.finish(offset)
    assert acks.finished_runs() == []  # all committed by the next commit
