"""The Kafka dev server itself: KRaft start and readiness, crash + restart keeping the
data, a SCRAM-SHA-512 listener, a TLS listener, and the jar lookup's error."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fixtures_kafka import KafkaFactory
from kafka_helpers import client_options, create_topic, produce, read_all

from workflow_eventbus.core.errors import ConfigError
from workflow_eventbus.devservers import kafka as kafka_mod
from workflow_eventbus.devservers.kafka import KafkaServer

ROOT = Path(__file__).resolve().parents[2]


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def test_started_server_serves_metadata_and_a_round_trip(kafka_server: KafkaServer) -> None:
    meta = await kafka_server.metadata()
    assert set(meta.brokers) == {0}
    assert kafka_server.url == f"kafka://{kafka_server.bootstrap}"
    name = topic()
    await create_topic(kafka_server, name)
    assert await kafka_server.leader_of(name) == 0
    await produce(kafka_server, name, [b"one", b"two"])
    assert await read_all(kafka_server, name, 2) == [b"one", b"two"]


async def test_topics_are_not_created_implicitly(kafka_server: KafkaServer) -> None:
    name = topic()
    producer = AIOKafkaProducer(**(client_options(kafka_server) | {"request_timeout_ms": 2000}))
    await producer.start()
    try:
        with pytest.raises(KafkaError):
            await producer.send_and_wait(name, b"x")
    finally:
        await producer.stop()
    assert name not in (await kafka_server.metadata()).topics


async def test_kill_and_restart_keep_acknowledged_data(private_kafka: KafkaFactory) -> None:
    server = await private_kafka()
    name = topic()
    await create_topic(server, name)
    values = [f"m{i}".encode() for i in range(200)]
    await produce(server, name, values)
    pid = server.pid()
    await server.kill()
    assert not server.running() and pid is not None
    assert not Path(f"/proc/{pid}").exists()
    await server.restart()
    assert server.running()
    assert await read_all(server, name, len(values)) == values


async def test_scram_listener_rejects_a_wrong_password(private_kafka: KafkaFactory) -> None:
    server = await private_kafka(scram=("alice", "alice-secret"))
    assert server.security_protocol == "SASL_PLAINTEXT"
    name = topic()
    await create_topic(server, name)
    await produce(server, name, [b"hello"])
    assert await read_all(server, name, 1) == [b"hello"]
    with pytest.raises(KafkaError):
        await produce(server, name, [b"intruder"], password="wrong")


async def test_tls_listener_with_its_ca(private_kafka: KafkaFactory, tmp_path: Path) -> None:
    server = await private_kafka(tls=True)
    assert server.security_protocol == "SSL" and server.ca_file and server.ca_file.is_file()
    name = topic()
    await create_topic(server, name)
    await produce(server, name, [b"secret"])
    assert await read_all(server, name, 1) == [b"secret"]
    # A client that trusts another CA does not get in.
    other = kafka_mod.make_certs(tmp_path)["ca"]
    with pytest.raises(KafkaError):
        await produce(server, name, [b"x"], ca_file=other)


def test_pom_and_module_name_the_same_kafka_version() -> None:
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    assert re.search(r"<kafka.version>(.+?)</kafka.version>", pom)[1] == kafka_mod.KAFKA_VERSION  # type: ignore[index]


def test_missing_jars_name_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(kafka_mod.ENV_LIBS, str(tmp_path))
    with pytest.raises(ConfigError, match="make setup"):
        kafka_mod.find_kafka_libs()
