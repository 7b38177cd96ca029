"""Small aiokafka helpers for tests that drive a KafkaServer directly (not through
the provider): client options for its listener, topic creation, produce, read back."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context

from workflow_eventbus.devservers.kafka import SCRAM_MECHANISM, KafkaServer


def client_options(
    server: KafkaServer, *, password: str | None = None, ca_file: Any = None
) -> dict[str, Any]:
    """aiokafka options for the server's client listener (its SCRAM user; ``password``
    overrides the password; ``ca_file`` the CA, default the server's own)."""
    options: dict[str, Any] = {
        "bootstrap_servers": server.bootstrap,
        "security_protocol": server.security_protocol,
        "request_timeout_ms": 10_000,
    }
    if server.scram:
        user, real = server.scram
        options |= {
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": real if password is None else password,
        }
    if server.tls:
        options["ssl_context"] = create_ssl_context(cafile=str(ca_file or server.ca_file))
    return options


async def create_topic(
    server: KafkaServer, name: str, *, partitions: int = 1, replication: int | None = None
) -> None:
    admin = AIOKafkaAdminClient(**client_options(server))
    await admin.start()
    try:
        rf = replication or server.nodes
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=rf)]
        )
    finally:
        await admin.close()


async def produce(server: KafkaServer, topic: str, values: list[bytes], **options: Any) -> None:
    producer = AIOKafkaProducer(**client_options(server, **options), acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def read_all(server: KafkaServer, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of ``topic`` from the beginning (no group)."""
    consumer = AIOKafkaConsumer(topic, **client_options(server), auto_offset_reset="earliest")
    await consumer.start()
    try:
        values: list[bytes] = []
        while len(values) < count:
            batch = await consumer.getmany(timeout_ms=10_000)
            if not batch:
                break
            values += [record.value for records in batch.values() for record in records]
        return values
    finally:
        await consumer.stop()


async def group_members(server: KafkaServer, group: str) -> list[Any]:
    """``[state, member count]`` of a consumer group (``["Dead", 0]`` before it exists)."""
    admin = AIOKafkaAdminClient(**client_options(server))
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for entry in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            return [entry[2], len(entry[5])]
    return ["Dead", 0]


async def topic_config(server: KafkaServer, topic: str) -> dict[str, str]:
    """The topic's effective settings as the broker describes them."""
    admin = AIOKafkaAdminClient(**client_options(server))
    await admin.start()
    try:
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    # resources: [(error_code, error_message, type, name, [(name, value, ...), ...])]
    return {entry[0]: entry[1] for entry in described[0].resources[0][4]}
