"""NatsProvider connection options: user/password, token, TLS, and failure texts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import BrokerUnavailableError, ConfigError
from workflow_eventbus.devservers.certs import make_certs
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.providers.nats import NatsProvider

PASSWORD = "pw-Secr3t-77"
TOKEN = "tok-Secr3t-99"


async def serve(tmp_path: Path, conf: str, name: str) -> EmbeddedNats:
    path = tmp_path / f"{name}.conf"
    path.write_text(conf)
    server = EmbeddedNats(store_dir=tmp_path / name, config_file=path)
    await server.start()
    return server


@pytest_asyncio.fixture(loop_scope="session")
async def user_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = await serve(
        tmp_path, f'authorization {{ user: alice, password: "{PASSWORD}" }}\n', "user"
    )
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def token_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    server = await serve(tmp_path, f'authorization {{ token: "{TOKEN}" }}\n', "token")
    yield server
    await server.stop()


async def connects(cluster: pb.ClusterConfig, url: str, timeout: float = 3.0) -> None:
    prov = NatsProvider(cluster, url, broker_name="bus")
    await prov.connect(timeout)
    try:
        assert prov.connected
        await prov.ensure_stream(pb.StreamConfig(name="AUTH", subjects=["auth.>"]))
    finally:
        await prov.close()
    assert not prov.connected


async def test_user_password_fields(user_server: EmbeddedNats) -> None:
    await connects(pb.ClusterConfig(user="alice", password=PASSWORD), user_server.url)


async def test_user_password_in_url(user_server: EmbeddedNats) -> None:
    url = f"nats://alice:{PASSWORD}@127.0.0.1:{user_server.port}"
    await connects(pb.ClusterConfig(), url)


async def test_wrong_password_fails_fast_without_the_secret(user_server: EmbeddedNats) -> None:
    wrong = "wrong-Secr3t-55"
    start = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as err:
        await connects(pb.ClusterConfig(user="alice", password=wrong), user_server.url, 10)
    assert time.monotonic() - start < 5  # an auth error ends the wait at once
    text = str(err.value)
    assert "Authorization" in text and "bus" in text
    assert wrong not in text and PASSWORD not in text


async def test_url_password_is_redacted(user_server: EmbeddedNats) -> None:
    url = f"nats://alice:bad-Secr3t-11@127.0.0.1:{user_server.port}"
    with pytest.raises(BrokerUnavailableError) as err:
        await connects(pb.ClusterConfig(), url, 5)
    assert "bad-Secr3t-11" not in str(err.value)
    assert "alice:***@" in str(err.value)


async def test_token(token_server: EmbeddedNats) -> None:
    await connects(pb.ClusterConfig(token=TOKEN), token_server.url)
    with pytest.raises(BrokerUnavailableError) as err:
        await connects(pb.ClusterConfig(token="nope-Secr3t"), token_server.url, 5)
    assert "nope-Secr3t" not in str(err.value) and TOKEN not in str(err.value)


async def test_unreachable_server_text() -> None:
    url = "nats://bob:pw-unreach-1@127.0.0.1:1"
    start = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as err:
        await connects(pb.ClusterConfig(), url, 0.5)
    assert time.monotonic() - start < 3
    text = str(err.value)
    assert "127.0.0.1:1" in text and "pw-unreach-1" not in text
    assert "check the server is running" in text


@pytest.mark.parametrize("field", ["nkey_seed_file", "creds_file"])
async def test_missing_credential_file_names_setting(field: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.file")
    cluster = pb.ClusterConfig(**{field: missing})
    with pytest.raises(ConfigError) as err:
        await connects(cluster, "nats://127.0.0.1:1", 1)
    assert field in str(err.value) and missing in str(err.value)


async def test_tls_with_ca_file(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    conf = f'tls {{ cert_file: "{certs["server"]}", key_file: "{certs["server-key"]}" }}\n'
    server = await serve(tmp_path, conf, "tls")
    try:
        tls = pb.TlsConfig(ca_file=str(certs["ca"]), server_name="localhost")
        await connects(pb.ClusterConfig(tls=tls), f"tls://127.0.0.1:{server.port}")
        with pytest.raises(BrokerUnavailableError):  # no CA: the certificate is not trusted
            await connects(pb.ClusterConfig(), f"tls://127.0.0.1:{server.port}", 2)
    finally:
        await server.stop()
