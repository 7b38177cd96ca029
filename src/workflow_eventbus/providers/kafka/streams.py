"""Streams and durable consumers on Kafka: topics, their settings, start offsets.

A stream's record in the registry lists its patterns and topics
(``registry.plan_stream``); :func:`ensure_stream` creates the topics that are
missing with the stream's partitions, replication and retention. A new durable
consumer's group gets its first committed offsets from the deliver policy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ..._proto import eventbus_pb2 as pb
from ...core.config import duration_seconds
from ...core.defaults import DEFAULT_KAFKA_PARTITIONS, DEFAULT_KAFKA_REPLICATION
from ...core.errors import ConfigError, ConflictError, NotFoundError, ProviderError
from ...core.names import STREAM
from ...core.subjects import patterns_overlap, split_filter, subject_matches
from .member import Member
from .registry import TOPIC as REGISTRY_TOPIC
from .registry import Registry, StreamRecord, TopicOf, plan_stream
from .scan import read_range, scanner
from .topics import MAX_PARTITIONS, decode_sequence, group_id

TOPIC_EXISTS = 36  # Kafka's TOPIC_ALREADY_EXISTS error code
LEADER_WAIT = 10.0  # s a new topic may take to elect its partition leaders
LEADER_POLL = 0.05  # s between looks
IMMUTABLE = ("deliver_policy", "opt_start_seq", "opt_start_time")


def provider_error(where: str, what: str, exc: KafkaError) -> ProviderError:
    return ProviderError(f"{where}: kafka {what} refused: {type(exc).__name__} {exc}")


async def _replication(admin: AIOKafkaAdminClient, wanted: int) -> int:
    if wanted > 0:
        return wanted
    brokers = (await admin.describe_cluster()).get("brokers", [])
    return max(min(DEFAULT_KAFKA_REPLICATION, len(brokers)), 1)


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create ``topics`` (existing ones are fine) and wait until each partition has a leader,
    so the first read or write does not meet NOT_LEADER errors."""
    if not topics:
        return
    response = await admin.create_topics(topics)
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else ""
        if code and code != TOPIC_EXISTS:
            raise ProviderError(
                f'kafka: creating topic "{name}" failed (error {code}): {message}; check the '
                "stream's settings against the cluster (replication at most the brokers)"
            )
    names = sorted(t.name for t in topics)
    deadline = time.monotonic() + LEADER_WAIT
    while time.monotonic() < deadline:
        if await _led(admin, names):
            return
        await asyncio.sleep(LEADER_POLL)


async def _led(admin: AIOKafkaAdminClient, names: list[str]) -> bool:
    found = await admin.describe_topics(names)
    return len(found) == len(names) and all(
        not entry.get("error_code")
        and entry.get("partitions")
        and all(p.get("leader", -1) >= 0 for p in entry["partitions"])
        for entry in found
    )


async def create_registry_topic(admin: AIOKafkaAdminClient, cluster: pb.ClusterConfig) -> None:
    if REGISTRY_TOPIC in await admin.list_topics():
        return
    replication = await _replication(admin, cluster.kafka.default_replication_factor)
    configs = {"cleanup.policy": "compact"}
    if cluster.kafka.min_insync_replicas:
        configs["min.insync.replicas"] = str(cluster.kafka.min_insync_replicas)
    await _create(admin, [NewTopic(REGISTRY_TOPIC, 1, replication, topic_configs=configs)])


def _check_stream(cfg: pb.StreamConfig) -> None:
    where = f'{STREAM} "{cfg.name}"'
    if cfg.retention_policy not in (pb.RETENTION_POLICY_UNSPECIFIED, pb.RETENTION_POLICY_LIMITS):
        raise ConfigError(
            f"{where}: retention_policy",
            "kafka keeps messages by limits only (a log; acks do not remove messages)",
            value=pb.RetentionPolicy.Name(cfg.retention_policy),
            fix="use retention_policy: limits with max_age/max_bytes, or provider nats/pgchannel",
        )
    if cfg.storage == pb.STORAGE_TYPE_MEMORY:
        raise ConfigError(
            f"{where}: storage",
            "kafka stores every topic on disk",
            value="memory",
            fix="remove storage (or set file)",
        )
    if cfg.max_msgs > 0:
        raise ConfigError(
            f"{where}: max_msgs",
            "kafka has no message-count limit",
            value=cfg.max_msgs,
            fix="limit the stream with max_age or max_bytes",
        )
    if not 0 <= cfg.partitions <= MAX_PARTITIONS:
        raise ConfigError(
            f"{where}: partitions",
            f"must be 1 to {MAX_PARTITIONS}",
            value=cfg.partitions,
            fix=f"set partitions between 1 and {MAX_PARTITIONS}, or remove it for the default",
        )
    for i, a in enumerate(cfg.subjects):
        for b in cfg.subjects[i + 1 :]:
            if patterns_overlap(a, b):
                raise ConfigError(
                    f"{where}: subjects",
                    f'"{a}" and "{b}" overlap: on kafka each subject pattern is one topic, so a '
                    "message must match exactly one",
                    value=list(cfg.subjects),
                    fix="use subjects no two of which match the same subject",
                )


def _topic_configs(cfg: pb.StreamConfig, cluster: pb.ClusterConfig) -> dict[str, str]:
    max_age = duration_seconds(cfg.max_age)
    configs = {"retention.ms": str(int(max_age * 1000)) if max_age > 0 else "-1"}
    if cfg.max_bytes > 0:
        configs["retention.bytes"] = str(cfg.max_bytes)
    if cfg.max_msg_size > 0:
        configs["max.message.bytes"] = str(cfg.max_msg_size + 1024)  # room for key and headers
    if cluster.kafka.min_insync_replicas:
        configs["min.insync.replicas"] = str(cluster.kafka.min_insync_replicas)
    return configs


async def ensure_stream(
    admin: AIOKafkaAdminClient, registry: Registry, cluster: pb.ClusterConfig, cfg: pb.StreamConfig
) -> None:
    _check_stream(cfg)
    await registry.sync()
    for other in registry.streams():
        if other.cfg.name == cfg.name:
            continue
        for mine in cfg.subjects:
            clash = next((p for p in other.cfg.subjects if patterns_overlap(mine, p)), None)
            if clash is not None:
                raise ConflictError(
                    f'{STREAM} "{cfg.name}": subjects: "{mine}" overlaps "{clash}" of stream '
                    f'"{other.cfg.name}"; give each stream subjects no other stream captures'
                )
    record = plan_stream(cfg, registry.stream(cfg.name))
    existing = set(await admin.list_topics())
    replication = await _replication(
        admin, cfg.num_replicas or cluster.kafka.default_replication_factor
    )
    partitions = cfg.partitions or DEFAULT_KAFKA_PARTITIONS
    configs = _topic_configs(cfg, cluster)
    await _create(
        admin,
        [
            NewTopic(t.topic, partitions, replication, topic_configs=configs)
            for t in record.topics
            if t.topic not in existing
        ],
    )
    kept = [t.topic for t in record.topics if t.topic in existing]
    if kept:
        await _update(admin, cfg, kept, configs)
    await registry.put_stream(record)


async def _update(
    admin: AIOKafkaAdminClient, cfg: pb.StreamConfig, topics: list[str], configs: dict[str, str]
) -> None:
    """Bring existing topics to the stream's settings: the configs the bus writes (as a
    whole: other dynamic settings of these topics are reset) and more partitions."""
    if cfg.partitions:
        have: dict[str, int] = {}
        for tp in await partitions_of(admin, topics):
            have[tp.topic] = have.get(tp.topic, 0) + 1
        grow = {}
        for topic, count in sorted(have.items()):
            if cfg.partitions < count:
                raise ConflictError(
                    f'{STREAM} "{cfg.name}": partitions is {count} on the broker (topic '
                    f'"{topic}"), config says {cfg.partitions}; Kafka cannot remove partitions: '
                    "keep the count or use a new stream name"
                )
            if cfg.partitions > count:
                grow[topic] = NewPartitions(cfg.partitions)
        if grow:
            await admin.create_partitions(grow)
    responses = await admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs) for topic in topics]
    )
    for response in responses:
        for code, message, _kind, name in response.resources:
            if code:
                raise ProviderError(
                    f'{STREAM} "{cfg.name}": updating topic "{name}" failed (error {code}): '
                    f"{message}; check max_age, max_bytes and max_msg_size"
                )


def topics_for_filter(record: StreamRecord, filter_subject: str) -> list[TopicOf]:
    """The stream's topics that can hold a subject the filter selects."""
    patterns = split_filter(filter_subject)
    if not patterns:
        return list(record.topics)
    return [t for t in record.topics if any(patterns_overlap(t.pattern, p) for p in patterns)]


def _check_immutable(existing: pb.ConsumerConfig, cfg: pb.ConsumerConfig) -> None:
    diffs = []
    for name in IMMUTABLE:
        old, new = getattr(existing, name), getattr(cfg, name)
        if old != new:
            if name == "deliver_policy":
                old, new = pb.DeliverPolicy.Name(old), pb.DeliverPolicy.Name(new)
            diffs.append(f"{name} is {old!r} on the broker, config says {new!r}")
    if split_filter(existing.filter_subject) != split_filter(cfg.filter_subject):
        diffs.append(
            f"filter_subject is {existing.filter_subject!r} on the broker, config says "
            f"{cfg.filter_subject!r}"
        )
    if diffs:
        raise ConflictError(
            f'eventbus.consumer "{cfg.name}" on stream "{cfg.stream_name}": '
            + "; ".join(diffs)
            + ". These cannot change on an existing durable: use a new consumer name"
        )


async def partitions_of(admin: AIOKafkaAdminClient, topics: list[str]) -> list[TopicPartition]:
    """Every partition of ``topics`` (those that exist), in topic and partition order."""
    if not topics:
        return []
    found = await admin.describe_topics(sorted(set(topics)))
    out = []
    for entry in found:
        if entry.get("error_code"):
            continue
        parts = sorted(p["partition"] for p in entry.get("partitions", []))
        out += [TopicPartition(entry["topic"], p) for p in parts]
    return sorted(out)


async def start_offsets(
    admin: AIOKafkaAdminClient,
    reader: AIOKafkaConsumer,
    record: StreamRecord,
    cfg: pb.ConsumerConfig,
) -> dict[TopicPartition, int]:
    """Where a new durable starts in each partition it reads (its deliver policy)."""
    topics = topics_for_filter(record, cfg.filter_subject)
    tps = await partitions_of(admin, [t.topic for t in topics])
    if not tps:
        return {}
    policy = cfg.deliver_policy
    begin = await reader.beginning_offsets(tps)
    if policy in (pb.DELIVER_POLICY_ALL, pb.DELIVER_POLICY_UNSPECIFIED):
        return dict(begin)
    end = await reader.end_offsets(tps)
    if policy == pb.DELIVER_POLICY_NEW:
        return dict(end)
    if policy == pb.DELIVER_POLICY_LAST:
        return {tp: max(end[tp] - 1, begin[tp]) for tp in tps}
    if policy == pb.DELIVER_POLICY_BY_START_SEQUENCE:
        topic_id, partition, offset = decode_sequence(int(cfg.opt_start_seq))
        named = record.topic_by_id(topic_id)
        start = dict(begin)
        if named is not None and TopicPartition(named.topic, partition) in start:
            tp = TopicPartition(named.topic, partition)
            start[tp] = min(max(offset, begin[tp]), end[tp])
        return start
    when = _start_time_ms(cfg)
    found = await reader.offsets_for_times(dict.fromkeys(tps, when))
    return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in tps}


def _start_time_ms(cfg: pb.ConsumerConfig) -> int:
    from datetime import datetime

    text = cfg.opt_start_time.replace("Z", "+00:00")
    try:
        return int(datetime.fromisoformat(text).timestamp() * 1000)
    except ValueError as exc:
        raise ConfigError(
            f'eventbus.consumer "{cfg.name}": opt_start_time',
            "is not an RFC 3339 time",
            value=cfg.opt_start_time,
            fix="write e.g. 2026-01-02T03:04:05Z",
        ) from exc


async def ensure_consumer(
    admin: AIOKafkaAdminClient,
    registry: Registry,
    reader: AIOKafkaConsumer,
    options: dict[str, Any],
    cfg: pb.ConsumerConfig,
) -> None:
    record = registry.stream(cfg.stream_name)
    existing = registry.consumer(cfg.stream_name, cfg.name)
    if record is None or existing is None:
        await registry.sync()
        record = registry.stream(cfg.stream_name)
        existing = registry.consumer(cfg.stream_name, cfg.name)
    if record is None:
        raise NotFoundError(
            f'eventbus.consumer "{cfg.name}": stream_name: stream "{cfg.stream_name}" not found; '
            "declare it with an eventbus.stream module started before the consumer"
        )
    if existing is not None:
        _check_immutable(existing, cfg)
        await registry.put_consumer(cfg)
        return
    offsets = await start_offsets(admin, reader, record, cfg)
    if offsets:
        await commit_offsets(options, group_id(cfg.stream_name, cfg.name), offsets)
    await registry.put_consumer(cfg)


async def commit_offsets(
    options: dict[str, Any], group: str, offsets: dict[TopicPartition, int]
) -> None:
    """Commit ``offsets`` for ``group`` without joining it (the group is new)."""
    committer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **options)
    try:
        await committer.start()
        committer.assign(list(offsets))
        await committer.commit(offsets)
    finally:
        await committer.stop()


async def pending(
    admin: AIOKafkaAdminClient,
    options: dict[str, Any],
    record: StreamRecord,
    cfg: pb.ConsumerConfig,
    member: Member | None,
    *,
    timeout: float,
) -> tuple[int, int]:
    """(not delivered yet, delivered and not settled) of a durable consumer.

    Counted from the group's committed offsets to the end of each partition; with
    a filter on a wildcard topic the records in between are read and matched. The
    unsettled ones are the leases this process holds (another process's leases
    count as not delivered)."""
    topics = topics_for_filter(record, cfg.filter_subject)
    committed = await admin.list_consumer_group_offsets(group_id(cfg.stream_name, cfg.name))
    async with scanner(options) as reader:
        tps = await partitions_of(admin, [t.topic for t in topics])
        if not tps:
            return 0, member.held if member else 0
        begin = await reader.beginning_offsets(tps)
        end = await reader.end_offsets(tps)
        owned = member.owned() if member else {}
        total = 0
        for tp in tps:
            start = (
                committed[tp].offset if tp in committed and committed[tp].offset >= 0 else begin[tp]
            )
            acks = owned.get(tp)
            if acks is not None and acks.committed >= start:
                start = acks.committed
            total += await _matching(
                reader,
                tp,
                start=start,
                end=end[tp],
                filter_subject=cfg.filter_subject,
                acks=acks,
                stall=timeout,
            )
    held = member.held if member else 0
    return max(total - held, 0), held


async def _matching(
    reader: AIOKafkaConsumer,
    tp: TopicPartition,
    *,
    start: int,
    end: int,
    filter_subject: str,
    acks: Any,
    stall: float,
) -> int:
    """Records of ``tp`` in [start, end) that match and are not finished here."""
    if start >= end:
        return 0
    patterns = split_filter(filter_subject)
    if not patterns and acks is None:
        return end - start
    count = 0
    async for rec in read_range(reader, tp, start, end, stall=stall):
        if acks is not None and rec.offset < acks.next_offset and not acks.is_open(rec.offset):
            continue  # finished here, not committed yet
        subject = rec.key.decode() if rec.key else ""
        if not patterns or any(subject_matches(p, subject) for p in patterns):
            count += 1
    return count
