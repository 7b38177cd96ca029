"""nats-py connect options from a ClusterConfig: auth, TLS, reconnect policy."""

from __future__ import annotations

import os
import ssl
from typing import Any

from ..._proto import eventbus_pb2 as pb
from ...core.errors import ConfigError

RECONNECT_WAIT = 0.5  # seconds between reconnect attempts (retries forever)
PING_INTERVAL = 10  # seconds; a dead server is noticed after ~2 missed pings


def _readable_file(setting: str, path: str) -> str:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(
            setting,
            "file does not exist or is not readable",
            value=path,
            fix="point it at an existing file readable by this process",
        )
    return path


def tls_context(tls: pb.TlsConfig) -> ssl.SSLContext | None:
    """An SSL context when any TLS file is configured, else None."""
    if not (tls.ca_file or tls.cert_file or tls.key_file):
        return None
    setting = "tls"
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_file:
        ctx.load_verify_locations(cafile=_readable_file(f"{setting}.ca_file", tls.ca_file))
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError(
            f"{setting}.cert_file/key_file",
            "a client certificate needs both cert_file and key_file",
            value=tls.cert_file or tls.key_file,
            fix="set both, or neither",
        )
    if tls.cert_file:
        cert = _readable_file(f"{setting}.cert_file", tls.cert_file)
        key = _readable_file(f"{setting}.key_file", tls.key_file)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{setting}.cert_file",
                f"cannot load the client certificate/key: {exc}",
                value=cert,
                fix="use a PEM certificate and its matching unencrypted PEM key",
            ) from exc
    return ctx


def auth_options(cluster: pb.ClusterConfig) -> dict[str, Any]:
    """User/password, token, nkey seed file, creds file and TLS options for nats.connect."""
    opts: dict[str, Any] = {}
    if cluster.user or cluster.password:
        opts["user"] = cluster.user
        opts["password"] = cluster.password
    if cluster.token:
        opts["token"] = cluster.token
    if cluster.nkey_seed_file:
        opts["nkeys_seed"] = _readable_file("nkey_seed_file", cluster.nkey_seed_file)
    if cluster.creds_file:
        opts["user_credentials"] = _readable_file("creds_file", cluster.creds_file)
    if cluster.HasField("tls"):
        ctx = tls_context(cluster.tls)
        if ctx is not None:
            opts["tls"] = ctx
        if cluster.tls.server_name:
            opts["tls_hostname"] = cluster.tls.server_name
        if cluster.tls.handshake_first:
            opts["tls_handshake_first"] = True
            if ctx is None:
                opts["tls"] = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return opts
