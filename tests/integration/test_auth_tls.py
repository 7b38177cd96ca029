"""NATS nkey seed, creds file (operator-mode JWT chain), mutual TLS and
handshake-first, each against a real nats-server configured for it; wrong
credentials give BrokerUnavailableError without the secret; Postgres DSN
passwords are redacted.

Certificates, nkeys and JWTs are generated here (cryptography, nkeys).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nkeys
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import BrokerUnavailableError, EventbusError
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.engine.bus import EventBus
from workflow_eventbus.providers.base import OutboundMessage
from workflow_eventbus.providers.nats import NatsProvider


# --- generators -------------------------------------------------------------------
def new_seed(prefix: int) -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), prefix))


def public(seed: bytes) -> str:
    return bytes(nkeys.from_seed(bytearray(seed)).public_key).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(claims: dict[str, Any], issuer_seed: bytes) -> str:
    """A NATS v2 JWT: ed25519-nkey signature by the issuer's seed."""
    claims = {"iat": int(time.time()), "iss": public(issuer_seed), **claims}
    body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    claims["jti"] = base64.b32encode(hashlib.sha256(body).digest()).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = nkeys.from_seed(bytearray(issuer_seed)).sign(signing_input)
    return f"{header}.{payload}.{_b64(bytes(signature))}"


UNLIMITED = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


def operator_chain(folder: Path) -> tuple[str, Path]:
    """(server config, creds file of a user) for a memory-resolver operator setup."""
    operator, account, user = (
        new_seed(nkeys.PREFIX_BYTE_OPERATOR),
        new_seed(nkeys.PREFIX_BYTE_ACCOUNT),
        new_seed(nkeys.PREFIX_BYTE_USER),
    )
    op_jwt = encode_jwt(
        {"sub": public(operator), "name": "op", "nats": {"type": "operator", "version": 2}},
        operator,
    )
    acc_jwt = encode_jwt(
        {
            "sub": public(account),
            "name": "app",
            "nats": {
                "limits": UNLIMITED,
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2,
            },
        },
        operator,
    )
    user_jwt = encode_jwt(
        {
            "sub": public(user),
            "name": "plugin",
            "nats": {
                "pub": {},
                "sub": {},
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        },
        account,
    )
    system = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    sys_jwt = encode_jwt(
        {
            "sub": public(system),
            "name": "SYS",
            "nats": {
                "limits": {
                    **UNLIMITED,
                    "mem_storage": 0,
                    "disk_storage": 0,
                    "streams": 0,
                    "consumer": 0,
                },
                "type": "account",
                "version": 2,
            },
        },
        operator,
    )
    creds = folder / "plugin.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    config = (
        f"operator: {op_jwt}\n"
        f"system_account: {public(system)}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{ {public(account)}: {acc_jwt}, {public(system)}: {sys_jwt} }}\n"
    )
    return config, creds


def make_ca(folder: Path) -> tuple[Any, Any, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventbus test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = folder / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue(folder: Path, ca_key: Any, ca_cert: Any, name: str, *, server: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# --- servers ------------------------------------------------------------------------
async def serve(folder: Path, conf: str, name: str, *, ready_check: bool = True) -> EmbeddedNats:
    path = folder / f"{name}.conf"
    path.write_text(conf)
    # With handshake_first the server says nothing before a TLS ClientHello, so the
    # plain-text readiness probe cannot work: the test polls with a TLS client instead.
    server = EmbeddedNats(store_dir=folder / name, config_file=path, ready_check=ready_check)
    await server.start()
    return server


async def roundtrip(cluster: pb.ClusterConfig, url: str) -> None:
    """Connect, create a stream, publish: the credentials really work end to end."""
    provider = NatsProvider(cluster, url, broker_name="secure")
    await provider.connect(10)
    try:
        stream = f"SEC{int(time.time() * 1000) % 100000}"
        await provider.ensure_stream(pb.StreamConfig(name=stream, subjects=[f"{stream}.>"]))
        result = await provider.publish(OutboundMessage(f"{stream}.a", b"hi"))
        assert result.sequence == 1
    finally:
        await provider.close()


async def refused(
    cluster: pb.ClusterConfig, url: str, *secrets: str, timeout: float = 10.0, fast: bool = True
) -> str:
    provider = NatsProvider(cluster, url, broker_name="secure")
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        await provider.connect(timeout)
    if fast:
        assert time.monotonic() - t0 < 8, "a refused credential must fail fast, not time out"
    await provider.close()
    text = str(info.value)
    for secret in secrets:
        assert secret and secret not in text
    return text


# --- nkey seed ------------------------------------------------------------------------
async def test_nkey_seed_file(tmp_path: Path) -> None:
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    other = new_seed(nkeys.PREFIX_BYTE_USER)
    server = await serve(
        tmp_path, f"authorization {{ users: [ {{ nkey: {public(seed)} }} ] }}\n", "nkey"
    )
    try:
        good, bad = tmp_path / "good.nk", tmp_path / "bad.nk"
        good.write_bytes(seed + b"\n")
        bad.write_bytes(other + b"\n")
        await roundtrip(pb.ClusterConfig(provider="nats", nkey_seed_file=str(good)), server.url)
        text = await refused(
            pb.ClusterConfig(provider="nats", nkey_seed_file=str(bad)), server.url, other.decode()
        )
        assert "credentials" in text
    finally:
        await server.stop()


# --- creds file (operator mode) ---------------------------------------------------------
async def test_creds_file_with_an_operator_jwt_chain(tmp_path: Path) -> None:
    config, creds = operator_chain(tmp_path)
    server = await serve(tmp_path, config, "operator")
    try:
        await roundtrip(pb.ClusterConfig(provider="nats", creds_file=str(creds)), server.url)
        # A creds file of another operator's user is refused; its seed never shows.
        (tmp_path / "foreign").mkdir()
        _, foreign = operator_chain(tmp_path / "foreign")
        seed_line = foreign.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
        await refused(
            pb.ClusterConfig(provider="nats", creds_file=str(foreign)), server.url, seed_line
        )
    finally:
        await server.stop()


# --- TLS ------------------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_cert, ca = make_ca(tmp_path)
    server_cert, server_key = issue(tmp_path, ca_key, ca_cert, "server", server=True)
    client_cert, client_key = issue(tmp_path, ca_key, ca_cert, "client", server=False)
    (tmp_path / "other").mkdir()
    other_key, other_cert, other_ca = make_ca(tmp_path / "other")
    rogue_cert, rogue_key = issue(tmp_path / "other", other_key, other_cert, "rogue", server=False)
    return {
        "ca": ca,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "other_ca": other_ca,
        "rogue_cert": rogue_cert,
        "rogue_key": rogue_key,
    }


def tls_block(pki: dict[str, Path], *, handshake_first: bool) -> str:
    extra = "  handshake_first: true\n" if handshake_first else ""
    return (
        "tls {\n"
        f'  cert_file: "{pki["server_cert"]}"\n'
        f'  key_file: "{pki["server_key"]}"\n'
        f'  ca_file: "{pki["ca"]}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        f"{extra}"
        "}\n"
    )


@pytest_asyncio.fixture(loop_scope="session", params=[False, True], ids=["tls", "handshake_first"])
async def tls_server(
    request: pytest.FixtureRequest, pki: dict[str, Path], tmp_path: Path
) -> AsyncIterator[tuple[EmbeddedNats, bool]]:
    first = bool(request.param)
    server = await serve(
        tmp_path, tls_block(pki, handshake_first=first), f"tls{int(first)}", ready_check=not first
    )
    yield server, first
    await server.stop()


async def test_mutual_tls(tls_server: tuple[EmbeddedNats, bool], pki: dict[str, Path]) -> None:
    server, first = tls_server
    url = server.url.replace("nats://", "tls://")
    good = pb.ClusterConfig(
        provider="nats",
        tls=pb.TlsConfig(
            ca_file=str(pki["ca"]),
            cert_file=str(pki["client_cert"]),
            key_file=str(pki["client_key"]),
            handshake_first=first,
            server_name="localhost",
        ),
    )
    deadline = time.monotonic() + 15
    while True:  # readiness: the first successful TLS round trip
        try:
            await roundtrip(good, url)
            break
        except BrokerUnavailableError:
            assert time.monotonic() < deadline, server.log_tail()
            await asyncio.sleep(0.05)
    # A client certificate from another CA is refused by the server.
    rogue = pb.ClusterConfig()
    rogue.CopyFrom(good)
    rogue.tls.cert_file, rogue.tls.key_file = str(pki["rogue_cert"]), str(pki["rogue_key"])
    await refused(rogue, url)
    # A server certificate we do not trust is refused by the client.
    untrusting = pb.ClusterConfig()
    untrusting.CopyFrom(good)
    untrusting.tls.ca_file = str(pki["other_ca"])
    await refused(untrusting, url)
    # The handshake order must match the server's: the flag really changes the wire.
    mismatched = pb.ClusterConfig()
    mismatched.CopyFrom(good)
    mismatched.tls.handshake_first = not first
    # (no TLS alert comes back in this case, so it ends at the connect timeout)
    await refused(mismatched, url, timeout=3.0, fast=False)


# --- Postgres DSN redaction -------------------------------------------------------------
async def test_postgres_password_never_appears(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "pg-Secr3t-42"
    host_port = pg_dsn.split("@", 1)[1].split("/", 1)[0]
    # A wrong password on an unreachable port, and a wrong password on the real server.
    for dsn in (
        f"postgresql://eventbus:{secret}@127.0.0.1:1/eventbus",
        f"postgresql://nobody:{secret}@{host_port}/nope?password={secret}",
    ):
        bus = EventBus(environ={})
        broker = bus.create_module(
            "eventbus.broker",
            "pg",
            {
                "provider": "pgchannel",
                "broker_target": "in_process",
                "dsn": dsn,
                "connect_timeout": "2s",
            },
        )
        with pytest.raises(EventbusError) as info:
            await broker.start()
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert secret not in caplog.text
        await bus.close()
    # The CLI prints the error without it too.
    from reliability_helpers import run_cli

    code, out, err = await run_cli(
        "dlq", "list", "--dsn", f"postgresql://eventbus:{secret}@127.0.0.1:1/eventbus"
    )
    assert code == 1 and "error:" in err
    assert secret not in out + err
