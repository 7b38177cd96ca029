"""The generated R3 config is a working JetStream cluster: three real nats-servers from the
Kubernetes ConfigMap's ``nats.conf`` (addresses mapped to loopback, stores to the
test's folder) hold an R3 stream
and keep its messages when the server that took them is killed."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest
import pytest_asyncio
import yaml
from nats.js.api import StreamConfig, StreamInfo

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.devservers.processes import free_port
from workflow_eventbus.engine import iac

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

NAME = "orders-bus"
T = TypeVar("T")


def generated_conf() -> str:
    stream = pb.StreamConfig(name="ORDERS", subjects=["orders.>"], num_replicas=3)
    cfg = pb.ClusterConfig(provider="nats", deploy_target="kubernetes", replicas=3)
    (manifests,) = iac.build(iac.Broker(NAME, cfg, (stream,)), iac.Options()).files
    config_map = next(d for d in yaml.safe_load_all(manifests.text) if d["kind"] == "ConfigMap")
    return str(config_map["data"]["nats.conf"])


def on_loopback(conf: str, i: int, cluster_ports: list[int]) -> str:
    """Pod i's config with the cluster's names and ports moved to 127.0.0.1, its store
    to the test's."""
    text = conf.replace("$POD_NAME", f"{NAME}-nats-{i}")  # what the pod's env gives
    text = re.sub(r"(?m)^http_port: 8222$", f"http_port: {free_port()}", text)
    text = re.sub(r"(?m)^  port: 6222$", f"  port: {cluster_ports[i]}", text)
    for j, port in enumerate(cluster_ports):
        text = text.replace(f"{NAME}-nats-{j}.{NAME}-nats-headless:6222", f"127.0.0.1:{port}")
    # The harness gives each server its own store (-sd), which may not be given twice.
    assert '  store_dir: "/data/jetstream"\n' in text
    text = text.replace('  store_dir: "/data/jetstream"\n', "")
    assert "6222" not in text and "headless" not in text, text
    return text


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(tmp_path: Path) -> AsyncIterator[list[EmbeddedNats]]:
    conf = generated_conf()
    cluster_ports = [free_port() for _ in range(3)]
    servers = []
    try:
        for i in range(3):
            path = tmp_path / f"nats-{i}.conf"
            path.write_text(on_loopback(conf, i, cluster_ports))
            server = EmbeddedNats(store_dir=tmp_path / f"s{i}", config_file=path)
            await server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def poll(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30) -> T:
    """``check()`` until it returns a value (a raised error counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await check()
        except Exception as exc:  # not elected yet, connection refused, ...
            found, last = None, exc
        else:
            last = None
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from last
        await asyncio.sleep(0.1)


async def stream_info(server: EmbeddedNats) -> StreamInfo:
    nc = await nats.connect(server.url, allow_reconnect=False)
    try:
        return await nc.jetstream(timeout=0.5).stream_info("ORDERS")
    finally:
        await nc.close()


async def test_the_r3_config_replicates_a_stream_across_three_servers(
    cluster: list[EmbeddedNats],
) -> None:
    first = await nats.connect(cluster[0].url)
    js = first.jetstream(timeout=0.5)  # asked again until a meta leader answers
    r3 = StreamConfig(name="ORDERS", subjects=["orders.>"], num_replicas=3)
    info = await poll(lambda: js.add_stream(r3), "the cluster to take an R3 stream")
    assert info.config.num_replicas == 3
    ack = await first.jetstream().publish("orders.created", b"one")
    assert ack.seq == 1
    await first.close()
    leader = (await stream_info(cluster[1])).cluster.leader  # type: ignore[union-attr]
    down = next(s for i, s in enumerate(cluster) if f"{NAME}-nats-{i}" == leader)
    await down.stop()
    alive = next(s for s in cluster if s is not down)

    async def new_leader() -> StreamInfo | None:
        info = await stream_info(alive)
        return info if info.cluster and info.cluster.leader not in (None, leader) else None

    after = await poll(new_leader, "a new stream leader among the two servers left")
    assert after.state.messages == 1
