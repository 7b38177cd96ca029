"""The kafka member around a rebalance: records and commits only of partitions it owns."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition

from workflow_eventbus.core.errors import BrokerUnavailableError
from workflow_eventbus.providers.kafka.acks import PartitionAcks
from workflow_eventbus.providers.kafka.member import Member, MemberConfig

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes = b"a.b"
    value: bytes = b"x"
    headers: tuple[()] = ()
    timestamp: int = 0


class _Consumer:
    """Stands in for AIOKafkaConsumer: a fixed batch, an assignment, commits recorded."""

    def __init__(self, batch: dict[TopicPartition, list[_Record]]) -> None:
        self.batch = batch
        self.assigned = {TP0, TP1}
        self.commits: list[dict[TopicPartition, Any]] = []

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[_Record]]:
        return self.batch

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if not_ours := set(offsets) - self.assigned:
            raise AssertionError(f"Partitions {not_ours} are not assigned")
        self.commits.append(offsets)


def _member(consumer: _Consumer) -> Member:
    cfg = MemberConfig("s", "c", {"t": 1}, ">", 30.0, 5, 100)
    member = Member(cfg, {"bootstrap_servers": "localhost:1"}, admin=None, log=logging.getLogger())  # type: ignore[arg-type]
    member._consumer = consumer  # type: ignore[assignment]
    for tp in consumer.assigned:
        member._parts[tp] = PartitionAcks()
    return member


async def test_records_of_a_partition_revoked_while_counts_load_are_dropped() -> None:
    consumer = _Consumer({TP0: [_Record("t", 0, 0)], TP1: [_Record("t", 1, 5)]})
    member = _member(consumer)

    async def load_counts(tps: list[TopicPartition]) -> None:  # a rebalance meanwhile
        await member.on_partitions_revoked([TP1])
        consumer.assigned = {TP0}
        member._counted.update(tps)

    member._load_counts = load_counts  # type: ignore[method-assign]
    await member._read(0.1)
    assert [(r.partition, r.offset) for r in member._ready] == [(0, 0)]
    assert TP1 not in member._parts
    await member._commit_now()  # commits go through: only TP0
    assert all(set(c) <= {TP0} for c in consumer.commits)


async def test_records_of_a_partition_handed_over_and_back_are_read_again() -> None:
    consumer = _Consumer({TP1: [_Record("t", 1, 5)]})
    member = _member(consumer)

    async def load_counts(tps: list[TopicPartition]) -> None:  # revoked and assigned again
        await member.on_partitions_revoked([TP1])
        await member.on_partitions_assigned([TP1])
        member._counted.update(tps)

    member._load_counts = load_counts  # type: ignore[method-assign]
    await member._read(0.1)
    assert not member._ready  # not taken: offsets 0..4 come first from the commit
    assert member._parts[TP1].next_offset == -1


async def test_an_assignment_starts_a_partition_afresh() -> None:
    member = _member(_Consumer({}))
    member._parts[TP1].take(7)  # left over from an earlier assignment
    await member.on_partitions_assigned([TP1])
    assert member._parts[TP1].next_offset == -1


async def test_commit_leaves_out_partitions_not_assigned() -> None:
    consumer = _Consumer({})
    member = _member(consumer)
    for tp in (TP0, TP1):
        member._parts[tp].take(3)
        member._parts[tp].finish(3)
    consumer.assigned = {TP0}
    await member._commit_now()
    assert [set(c) for c in consumer.commits] == [{TP0}]


async def test_confirm_raises_when_the_commits_do_not_get_through() -> None:
    member = _member(_Consumer({}))
    member._committed.clear()  # acks finished, never committed (the broker is gone)
    with pytest.raises(BrokerUnavailableError, match="connect_timeout"):
        await member.confirm(0.01)
