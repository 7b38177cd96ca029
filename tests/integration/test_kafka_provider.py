"""The kafka provider against real brokers: SASL/SCRAM over TLS, wrong credentials,
unacked messages surviving a consumer's exit, a rebalance between two members,
partitions with order per subject, and the config rules Kafka imposes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from fixtures_kafka import KafkaFactory
from reliability_helpers import until
from test_cli_ops import cli

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.config import to_duration
from workflow_eventbus.core.deadletter import DLQ_CONSUMER, DLQ_SEQUENCE, DLQ_STREAM
from workflow_eventbus.core.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    NotFoundError,
)
from workflow_eventbus.providers import REGISTRY
from workflow_eventbus.providers.base import AckAction, Delivery, OutboundMessage, Provider
from workflow_eventbus.providers.kafka import KafkaProvider
from workflow_eventbus.providers.kafka.streams import partitions_of

pytestmark = pytest.mark.asyncio(loop_scope="session")


def make(url: str, **settings: object) -> KafkaProvider:
    cluster = REGISTRY["kafka"].fill_defaults(pb.ClusterConfig(dsn=url, **settings))  # type: ignore[arg-type]
    provider = REGISTRY["kafka"].create(cluster, url, "bus")
    assert isinstance(provider, KafkaProvider)
    return provider


@pytest_asyncio.fixture(loop_scope="session")
async def kafka(kafka_url: str) -> AsyncIterator[KafkaProvider]:
    provider = make(kafka_url)
    await provider.connect(20.0)
    yield provider
    await provider.close()


async def stream_of(provider: Provider, **kw: object) -> tuple[str, str]:
    token = uuid.uuid4().hex[:8]
    name, root = f"K_{token}", f"k{token}"
    await provider.ensure_stream(pb.StreamConfig(name=name, subjects=[f"{root}.>"], **kw))  # type: ignore[arg-type]
    return name, root


async def consumer_of(provider: Provider, stream: str, ack_wait: float = 30.0) -> str:
    name = f"c_{uuid.uuid4().hex[:8]}"
    await provider.ensure_consumer(
        pb.ConsumerConfig(
            name=name,
            stream_name=stream,
            deliver_policy=pb.DELIVER_POLICY_ALL,
            ack_wait=to_duration(ack_wait),
        )
    )
    return name


async def take(
    provider: Provider, stream: str, consumer: str, want: int, timeout: float = 20.0
) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await provider.fetch(stream, consumer, want - len(got), 1.0)
    return got


async def test_scram_over_tls_works_and_a_wrong_password_is_refused_without_it(
    private_kafka: KafkaFactory,
) -> None:
    server = await private_kafka(scram=("alice", "s3cret-pw"), tls=True)
    assert server.ca_file is not None
    host = server.bootstrap
    tls = pb.TlsConfig(ca_file=str(server.ca_file))
    good = make(f"kafka://alice:s3cret-pw@{host}", tls=tls)
    await good.connect(30.0)
    try:
        assert good._options["security_protocol"] == "SASL_SSL"
        stream, root = await stream_of(good)
        durable = await consumer_of(good, stream)
        sent = await good.publish(OutboundMessage(f"{root}.a", b"over tls", headers={"X": "1"}))
        (got,) = await take(good, stream, durable, 1)
        assert (got.payload, got.headers["X"], got.sequence) == (b"over tls", "1", sent.sequence)
        await good.settle([got.ack_token], AckAction.ACK)
    finally:
        await good.close()

    wrong = make(f"kafka://alice:not-the-pw@{host}", tls=tls)
    with pytest.raises(BrokerUnavailableError) as err:
        await wrong.connect(15.0)
    assert "not-the-pw" not in str(err.value)
    await wrong.close()

    untrusted = make(
        f"kafka://alice:s3cret-pw@{host}",
        kafka=pb.KafkaConfig(security_protocol=pb.KAFKA_SECURITY_PROTOCOL_SASL_SSL),
    )
    with pytest.raises(BrokerUnavailableError):
        await untrusted.connect(15.0)  # the dev CA is not in the system trust store
    await untrusted.close()


async def test_unacked_messages_come_back_after_the_reader_leaves(
    kafka: KafkaProvider, kafka_url: str
) -> None:
    stream, root = await stream_of(kafka)
    durable = await consumer_of(kafka, stream)
    for i in range(4):
        await kafka.publish(OutboundMessage(f"{root}.a", f"m{i}".encode()))
    first = make(kafka_url)
    await first.connect(20.0)
    got = await take(first, stream, durable, 4)
    assert [d.payload for d in got] == [b"m0", b"m1", b"m2", b"m3"]
    await first.settle([got[0].ack_token, got[2].ack_token], AckAction.ACK)
    await first.confirm()
    await first.close()  # m1 (and m3) never acked: the committed offset stops at m1

    again = await take(kafka, stream, durable, 2)
    # m2 was acked after the unacked m1: the commit's metadata says so, it is not read again.
    assert [d.payload for d in again] == [b"m1", b"m3"]
    assert [d.sequence for d in again] == [got[1].sequence, got[3].sequence]
    # The counts travelled in the commit too: both were delivered once before.
    assert [d.delivery_count for d in again] == [2, 2]
    await kafka.settle([d.ack_token for d in again], AckAction.ACK)
    await kafka.confirm()
    assert await kafka.fetch(stream, durable, 10, 1.0) == []


async def revoking(provider: KafkaProvider, stream: str, durable: str) -> None:
    """Return once the provider's member is handing partitions over (a member joined)."""
    member = provider._members[(stream, durable)]
    deadline = time.monotonic() + 15.0
    while not member.revoking:
        assert time.monotonic() < deadline, "the group never rebalanced"
        await asyncio.sleep(0.01)


async def test_a_rebalance_lets_running_deliveries_finish_and_loses_nothing(
    kafka: KafkaProvider, kafka_url: str
) -> None:
    stream, root = await stream_of(kafka, partitions=4)
    durable = await consumer_of(kafka, stream)
    subjects = [f"{root}.s{i}" for i in range(8)]
    await kafka.publish_many([OutboundMessage(s, s.encode()) for s in subjects])
    held = await take(kafka, stream, durable, 8)
    assert len(held) == 8
    other = make(kafka_url)
    await other.connect(20.0)
    try:
        # The second member joins; the first still holds all 8 and acks them while the
        # group rebalances: its revoked partitions wait for that, so nothing is read twice.
        joining = asyncio.create_task(other.fetch(stream, durable, 10, 8.0))
        await revoking(kafka, stream, durable)
        await asyncio.sleep(1.0)  # the handlers are still working when the revoke begins
        await kafka.settle([d.ack_token for d in held], AckAction.ACK)
        assert await joining == []
        await kafka.publish_many([OutboundMessage(s, b"second") for s in subjects])
        seen: list[Delivery] = []
        deadline = time.monotonic() + 20
        while len(seen) < 8 and time.monotonic() < deadline:
            for provider in (kafka, other):
                batch = await provider.fetch(stream, durable, 8, 0.3)
                await provider.settle([d.ack_token for d in batch], AckAction.ACK)
                seen += batch
        assert sorted(d.subject for d in seen) == sorted(subjects)
        assert {d.payload for d in seen} == {b"second"}
    finally:
        await other.close()


async def test_partitions_keep_order_per_subject(kafka: KafkaProvider) -> None:
    stream, root = await stream_of(kafka, partitions=3)
    durable = await consumer_of(kafka, stream)
    msgs = [OutboundMessage(f"{root}.s{i % 12}", f"{i}".encode()) for i in range(60)]
    results = await kafka.publish_many(msgs)
    partitions = {r.sequence >> 40 & 0xFFF for r in results if not isinstance(r, Exception)}
    assert len(partitions) > 1  # the subjects really are spread over partitions
    got = await take(kafka, stream, durable, 60)
    await kafka.settle([d.ack_token for d in got], AckAction.ACK)
    by_subject: dict[str, list[int]] = {}
    for d in got:
        by_subject.setdefault(d.subject, []).append(int(d.payload))
    assert len(got) == 60
    assert all(values == sorted(values) for values in by_subject.values())


async def test_streams_kafka_cannot_keep_are_refused_naming_the_setting(
    kafka: KafkaProvider,
) -> None:
    cases = [
        (
            pb.StreamConfig(
                name="K_bad1", subjects=["a.b"], retention_policy=pb.RETENTION_POLICY_WORKQUEUE
            ),
            "retention_policy",
        ),
        (pb.StreamConfig(name="K_bad2", subjects=["a.b"], max_msgs=10), "max_msgs"),
        (pb.StreamConfig(name="K_bad3", subjects=["x.>", "x.y"]), "subjects"),
        (pb.StreamConfig(name="K_bad4", subjects=["x.ü"]), "subjects[0]"),
    ]
    for cfg, setting in cases:
        with pytest.raises(ConfigError) as err:
            await kafka.ensure_stream(cfg)
        assert err.value.setting.endswith(setting), (setting, str(err.value))
        assert err.value.fix


async def test_publish_while_the_broker_is_down_is_a_typed_error(
    private_kafka: KafkaFactory,
) -> None:
    server = await private_kafka()
    provider = make(server.url, connect_timeout=to_duration(3.0))
    await provider.connect(30.0)
    try:
        _, root = await stream_of(provider)
        await provider.publish(OutboundMessage(f"{root}.a", b"up"))
        states: list[bool] = []
        provider.state_listener = lambda up, reason: states.append(up)
        await server.kill()
        with pytest.raises(BrokerUnavailableError):
            await provider.publish(OutboundMessage(f"{root}.a", b"down"))
        await until(lambda: not provider.connected, what="the provider reports the broker down")
        await server.restart()
        await until(
            lambda: provider.connected, timeout=30, what="the provider reports the broker back"
        )
        assert states == [False, True]
        deadline = time.monotonic() + 30
        while True:
            try:
                await provider.publish(OutboundMessage(f"{root}.a", b"back"))
                break
            except BrokerUnavailableError:
                assert time.monotonic() < deadline, "publish did not recover"
    finally:
        await provider.close()


async def test_status_reports_streams_and_consumers(kafka: KafkaProvider, kafka_url: str) -> None:
    stream, root = await stream_of(kafka)
    durable = await consumer_of(kafka, stream)
    sent = [await kafka.publish(OutboundMessage(f"{root}.a", f"m{i}".encode())) for i in range(5)]
    got = await take(kafka, stream, durable, 3)
    await kafka.settle([got[0].ack_token], AckAction.ACK)
    await kafka.settle([got[1].ack_token], AckAction.NAK)
    again = await take(kafka, stream, durable, 1)
    assert again[0].delivery_count == 2
    (row,) = [s for s in await kafka.stream_status() if s.name == stream]
    assert (row.messages, row.consumers, row.retention) == (5, 1, "limits")
    assert (row.first_sequence, row.last_sequence) == (sent[0].sequence, sent[-1].sequence)
    assert row.subjects == (f"{root}.>",) and row.last_published is not None
    (consumer,) = await kafka.consumer_status(stream)
    # 2 never delivered; 2 held (one of them delivered twice); one acked.
    assert (consumer.name, consumer.pending, consumer.ack_pending, consumer.redelivered) == (
        durable,
        2,
        2,
        1,
    )
    with pytest.raises(NotFoundError):
        await kafka.consumer_status("NO_SUCH_STREAM")

    await kafka.confirm()  # m0's ack is committed: another process starts after it
    code, out, err = await cli("status", "--url", kafka_url, "--stream", stream, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["provider"] == "kafka"
    assert [(s["name"], s["messages"]) for s in report["streams"]] == [(stream, 5)]
    # Another process holds no leases: what this one holds counts as pending there.
    assert [(c["name"], c["pending"]) for c in report["consumers"]] == [(durable, 4)]


def rows(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_tail_and_msg_id_dedup_across_processes(kafka: KafkaProvider, kafka_url: str) -> None:
    stream, root = await stream_of(kafka)
    a, b = f"{root}.a", f"{root}.b"
    url = ["--url", kafka_url]
    first = await kafka.publish(OutboundMessage(a, b"one", headers={"k": "v"}))
    await kafka.publish_many([OutboundMessage(b, b"other"), OutboundMessage(b, b"other")])
    send = ("publish", a, "-", "--msg-id", "m", "--count", "2", "--json", *url)
    code, out, err = await cli(*send, stdin=b"from stdin")
    assert code == 0, err
    sent = rows(out)
    # A new process publishing the same ids: the dedup store was filled from the topic.
    code, out, err = await cli(*send, stdin=b"from stdin")
    assert code == 0, err
    again = rows(out)
    assert all(r["duplicate"] for r in again) and not any(r["duplicate"] for r in sent)
    assert [r["sequence"] for r in again] == [r["sequence"] for r in sent]

    code, out, err = await cli("tail", a, "--from-start", "--count", "3", "--json", *url)
    assert code == 0, err
    tailed = rows(out)
    assert [r["data"] for r in tailed] == ["one", "from stdin", "from stdin"]
    assert [r["sequence"] for r in tailed] == [first.sequence] + [r["sequence"] for r in sent]
    assert tailed[0]["headers"] == {"k": "v"}
    code, out, err = await cli("tail", a, "--last", "2", "--count", "2", "--json", *url)
    assert code == 0, err
    assert [r["sequence"] for r in rows(out)] == [r["sequence"] for r in sent]
    # The readers were groupless: no consumer group of the stream is left on the broker.
    groups = await kafka.admin.list_consumer_groups()
    assert not [g for g in groups if str(g[0]).startswith(f"{stream}.")]


async def test_declaring_a_stream_again_updates_its_topics(kafka: KafkaProvider) -> None:
    stream, root = await stream_of(kafka, partitions=1)
    topic = f"{root}._all"
    cfg = pb.StreamConfig(
        name=stream, subjects=[f"{root}.>"], partitions=3, max_age=to_duration(3600)
    )
    await kafka.ensure_stream(cfg)
    assert len(await partitions_of(kafka.admin, [topic])) == 3
    (described,) = await kafka.admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": None})]
    )
    values = {entry[0]: entry[1] for entry in described.resources[0][4]}
    assert values["retention.ms"] == "3600000"
    cfg.partitions = 2
    with pytest.raises(ConflictError, match="cannot remove partitions"):
        await kafka.ensure_stream(cfg)


async def test_max_ack_pending_bounds_what_one_member_holds(kafka: KafkaProvider) -> None:
    stream, root = await stream_of(kafka)
    name = "bounded"
    await kafka.ensure_consumer(
        pb.ConsumerConfig(
            name=name,
            stream_name=stream,
            deliver_policy=pb.DELIVER_POLICY_ALL,
            max_ack_pending=3,
        )
    )
    await kafka.publish_many([OutboundMessage(f"{root}.a", b"x") for _ in range(10)])
    held = await take(kafka, stream, name, 3)
    assert len(held) == 3
    assert await kafka.fetch(stream, name, 10, 1.0) == []  # three unacked: no more
    await kafka.settle([held[0].ack_token], AckAction.ACK)
    (one,) = await kafka.fetch(stream, name, 10, 5.0)
    assert one.sequence == held[-1].sequence + 1


async def test_a_naks_delay_and_count_survive_a_change_of_reader(
    kafka: KafkaProvider, kafka_url: str
) -> None:
    stream, root = await stream_of(kafka)
    durable = await consumer_of(kafka, stream)
    await kafka.publish(OutboundMessage(f"{root}.a", b"retry me"))
    first = make(kafka_url)
    await first.connect(20.0)
    (got,) = await take(first, stream, durable, 1)
    naked_at = time.monotonic()
    await first.settle([got.ack_token], AckAction.NAK, delay=4.0)
    await first.confirm()
    await first.close()
    assert await kafka.fetch(stream, durable, 1, 1.0) == []  # the new reader waits too
    (again,) = await take(kafka, stream, durable, 1)
    assert time.monotonic() - naked_at >= 3.5
    assert (again.sequence, again.delivery_count) == (got.sequence, 2)
    await kafka.settle([again.ack_token], AckAction.ACK)


@pytest.mark.parametrize(
    ("scram", "tls", "protocol"),
    [(True, False, "SASL_PLAINTEXT"), (False, True, "SSL")],
    ids=["scram-plaintext", "tls-only"],
)
async def test_scram_alone_and_tls_alone(
    private_kafka: KafkaFactory, scram: bool, tls: bool, protocol: str
) -> None:
    server = await private_kafka(scram=("bob", "pw-4-bob") if scram else None, tls=tls)
    auth = "bob:pw-4-bob@" if scram else ""
    settings = {"tls": pb.TlsConfig(ca_file=str(server.ca_file))} if tls else {}
    provider = make(f"kafka://{auth}{server.bootstrap}", **settings)
    await provider.connect(30.0)
    try:
        assert provider._options["security_protocol"] == protocol
        stream, root = await stream_of(provider)
        durable = await consumer_of(provider, stream)
        await provider.publish(OutboundMessage(f"{root}.a", protocol.encode()))
        (got,) = await take(provider, stream, durable, 1)
        assert got.payload == protocol.encode()
    finally:
        await provider.close()


async def test_removed_dead_letters_at_the_start_are_deleted_for_good(
    kafka: KafkaProvider,
) -> None:
    own, own_root = await stream_of(kafka)  # a dead-letter stream of this test alone
    for seq in (1, 2, 3):
        await kafka.publish(
            OutboundMessage(
                f"{own_root}.dead",
                f"p{seq}".encode(),
                {DLQ_STREAM: "SRC", DLQ_CONSUMER: "w", DLQ_SEQUENCE: str(seq)},
            )
        )
    store = await kafka.dead_letters(own)
    letters = await store.list()
    assert [x.sequence for x in letters] == [1, 2, 3]
    await store.remove(letters[1])  # in the middle: hidden, still stored
    assert [x.sequence for x in await store.list()] == [1, 3]
    tp = (await partitions_of(kafka.admin, [f"{own_root}._all"]))[0]
    assert (await kafka.reader.beginning_offsets([tp]))[tp] == 0
    await store.remove(letters[0])  # now the first two are removed: gone for good
    assert (await kafka.reader.beginning_offsets([tp]))[tp] == 2
    assert [x.sequence for x in await store.list()] == [3]
    assert not [k for k in kafka.registry.entries if k.startswith(f"removed/{own}/")]
    await store.remove(letters[0])  # again: nothing left to do, nothing written
    assert not [k for k in kafka.registry.entries if k.startswith(f"removed/{own}/")]


async def test_a_running_member_follows_new_subjects_and_settings(kafka: KafkaProvider) -> None:
    token = uuid.uuid4().hex[:8]
    stream, a, b = f"K_{token}", f"k{token}.a", f"k{token}.b"
    await kafka.ensure_stream(pb.StreamConfig(name=stream, subjects=[a]))
    durable = await consumer_of(kafka, stream)
    assert await kafka.fetch(stream, durable, 1, 0.5) == []  # the member runs
    await kafka.ensure_stream(pb.StreamConfig(name=stream, subjects=[a, b]))  # a new topic
    await kafka.publish(OutboundMessage(b, b"on the new subject"))
    (got,) = await take(kafka, stream, durable, 1)
    assert (got.subject, got.payload) == (b, b"on the new subject")
    await kafka.settle([got.ack_token], AckAction.ACK)
    await kafka.ensure_consumer(
        pb.ConsumerConfig(
            name=durable, stream_name=stream, deliver_policy=pb.DELIVER_POLICY_ALL, max_deliver=1
        )
    )
    await kafka.publish(OutboundMessage(a, b"once"))
    (once,) = await take(kafka, stream, durable, 1)
    await kafka.settle([once.ack_token], AckAction.NAK)
    assert await kafka.fetch(stream, durable, 1, 1.0) == []  # max_deliver 1 applies now
