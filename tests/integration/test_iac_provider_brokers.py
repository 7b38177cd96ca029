"""The IaC provider's broker half against real servers: the NATS admin capability
(live settings vs config, delete), the stream/consumer drivers on nats-server and on
PostgreSQL (pgchannel), and the self-hosted server supervisor (idempotent start,
restart on the recorded port, stop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.js.api import StorageType
from nats_provider_helpers import new_stream, stream_cfg, unique

from workflow_eventbus._proto import iac_pb2 as ipb
from workflow_eventbus.devservers.engine import alive
from workflow_eventbus.plugin.iac import server as supervisor
from workflow_eventbus.plugin.iac import wire
from workflow_eventbus.plugin.iac.drivers import ConsumerDriver, Settings, StreamDriver
from workflow_eventbus.providers.nats import NatsProvider


async def test_a_hand_made_change_and_an_immutable_setting_on_jetstream(
    provider: NatsProvider, raw: Any
) -> None:
    """JetStream specifics beyond the conformance suite: a change made on the server
    itself is seen, and storage is marked as needing a new stream."""
    name, subject = await new_stream(provider, max_age="1h")
    declared = stream_cfg(name=name, subjects=[f"{subject}.>"], max_age="1h")
    info = await raw.stream_info(name)
    info.config.max_age = 7200.0
    await raw.update_stream(info.config)
    assert [d.setting for d in await provider.stream_drift(declared) or []] == ["max_age"]
    memory = stream_cfg(name=name, subjects=[f"{subject}.>"], max_age="1h", storage="memory")
    drifts = {d.setting: d for d in await provider.stream_drift(memory) or []}
    assert drifts["storage"].immutable, drifts
    assert (await raw.stream_info(name)).config.storage == StorageType.FILE


def _spec(resource: str, resource_type: str, **config: object) -> ipb.ResourceSpec:
    return ipb.ResourceSpec(name=resource, type=resource_type, config_json=wire.dump_json(config))


class Made:
    """A stream "orders" and its consumer "worker" made through the drivers."""

    def __init__(self, settings: Settings) -> None:
        self.streams, self.consumers = StreamDriver(settings), ConsumerDriver(settings)
        self.stream = unique("S")
        subjects = [f"{self.stream.lower()}.>"]
        self.s_spec = _spec("orders", wire.STREAM_TYPE, name=self.stream, subjects=subjects)
        self.c_spec = _spec("worker", wire.CONSUMER_TYPE, name="worker", stream_name=self.stream)

    async def create(self) -> tuple[ipb.ResourceOutput, ipb.ResourceOutput]:
        return await self.streams.create(self.s_spec), await self.consumers.create(self.c_spec)


async def test_drivers_create_diff_update_read_delete(nats_url: str, raw: Any) -> None:
    made = Made(Settings(url=nats_url))
    streams, consumers, stream = made.streams, made.consumers, made.stream
    s_spec, c_spec = made.s_spec, made.c_spec
    s_out, c_out = await made.create()
    assert s_out.provider_id == f"{wire.public_url(nats_url)}#{stream}"
    assert c_out.provider_id == f"{wire.public_url(nats_url)}#{stream}/worker"
    assert json.loads(c_out.outputs_json)["consumer"] == "worker"
    assert not (await streams.diff(s_spec, s_out)).needs_update

    longer = _spec(
        "orders", wire.STREAM_TYPE, name=stream, subjects=[f"{stream.lower()}.>"], max_age="1h"
    )
    change = await streams.diff(longer, s_out)
    assert change.needs_update and not change.needs_replace
    assert [c.path for c in change.changes] == ["max_age"]
    await streams.update(ipb.ResourceRef(provider_id=s_out.provider_id), longer)
    assert (await raw.stream_info(stream)).config.max_age == 3600.0
    assert not (await streams.diff(longer, s_out)).needs_update

    ref = ipb.ResourceRef(name="orders", type=wire.STREAM_TYPE, provider_id=s_out.provider_id)
    assert (await streams.read(ref)).provider_id == s_out.provider_id
    c_ref = ipb.ResourceRef(name="worker", type=wire.CONSUMER_TYPE, provider_id=c_out.provider_id)
    assert await consumers.delete(c_ref) is True
    assert (await consumers.diff(c_spec, c_out)).changes[0].path == "exists"
    assert await streams.delete(ref) is True
    assert await streams.drift(ref, None) is None


async def test_server_start_is_idempotent_restarts_on_its_port_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "srv"
    first = await supervisor.ensure_running(data_dir, 0, ready_timeout=15.0)
    try:
        assert alive(first.pid) and supervisor.is_serving(first)
        again = await supervisor.ensure_running(data_dir, 0, ready_timeout=15.0)
        assert again == first  # already running: the same process
        assert await supervisor.stop(data_dir, grace=5.0) is True
        assert not supervisor.is_serving(first)
        back = await supervisor.ensure_running(data_dir, 0, ready_timeout=15.0)
        assert back.port == first.port and back.pid != first.pid
    finally:
        assert await supervisor.remove(data_dir, grace=5.0) is True
    assert not data_dir.exists()
    assert await supervisor.remove(data_dir, grace=5.0) is False


async def test_drivers_on_pgchannel_create_diff_and_delete(pg_dsn: str) -> None:
    """The same drivers on a PostgreSQL URL (the pgchannel provider's admin capability)."""
    made = Made(Settings(url=pg_dsn))  # stored ids have no password: reached through this
    streams, consumers, stream, s_spec = made.streams, made.consumers, made.stream, made.s_spec
    s_out, c_out = await made.create()
    assert s_out.provider_id == f"{wire.public_url(pg_dsn)}#{stream}"
    assert not (await streams.diff(s_spec, s_out)).needs_update
    more = _spec("worker", wire.CONSUMER_TYPE, name="worker", stream_name=stream, max_deliver=3)
    change = await consumers.diff(more, c_out)
    assert [c.path for c in change.changes] == ["max_deliver"] and not change.needs_replace
    ref = ipb.ResourceRef(name="orders", type=wire.STREAM_TYPE, provider_id=s_out.provider_id)
    assert await streams.delete(ref) is True
    assert (
        await consumers.drift(
            ipb.ResourceRef(name="worker", type=wire.CONSUMER_TYPE, provider_id=c_out.provider_id),
            None,
        )
        is None
    )
