"""Measure what durability costs: publish rate with the server defaults, with
``sync_interval: always``, and on an R3 cluster (run: python tests/chaos/durability_cost.py).

Prints a markdown table; docs/guarantees.md quotes one run. Each figure is the
median of 3 runs of N messages of 128 bytes through the library's provider
(one awaited publish at a time, and pipelined publish_many in chunks of 500).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import NatsCluster

from workflow_eventbus._proto import eventbus_pb2 as pb
from workflow_eventbus.core.errors import EventbusError
from workflow_eventbus.devservers.nats_server import EmbeddedNats
from workflow_eventbus.providers.base import OutboundMessage
from workflow_eventbus.providers.nats import NatsProvider

N = 3000
PAYLOAD = b"x" * 128


async def rates(url: str, replicas: int) -> tuple[float, float]:
    provider = NatsProvider(pb.ClusterConfig(provider="nats"), url, broker_name="m")
    await provider.connect(10)
    try:
        seq_rates, pipe_rates = [], []
        for run in range(3):
            name = f"DUR{replicas}X{run}"
            cfg = pb.StreamConfig(
                name=name, subjects=[f"dur{replicas}x{run}.>"], num_replicas=replicas
            )
            deadline = time.monotonic() + 60
            while True:
                try:
                    await provider.ensure_stream(cfg)
                    break
                except EventbusError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)  # cluster still electing its meta leader
            subject = f"dur{replicas}x{run}.a"
            t0 = time.perf_counter()
            for _ in range(N):
                await provider.publish(OutboundMessage(subject, PAYLOAD))
            seq_rates.append(N / (time.perf_counter() - t0))
            msgs = [OutboundMessage(subject, PAYLOAD) for _ in range(N)]
            t0 = time.perf_counter()
            for start in range(0, N, 500):
                results = await provider.publish_many(msgs[start : start + 500])
                assert not [r for r in results if isinstance(r, Exception)]
            pipe_rates.append(N / (time.perf_counter() - t0))
        return statistics.median(seq_rates), statistics.median(pipe_rates)
    finally:
        await provider.close()


async def main() -> None:
    rows = []
    async with EmbeddedNats() as server:
        rows.append(("R1, default sync (fsync every 2 min)", *await rates(server.url, 1)))
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "always.conf"
        conf.write_text("jetstream { sync_interval: always }\n")
        async with EmbeddedNats(config_file=conf) as server:
            rows.append(("R1, sync_interval: always", *await rates(server.url, 1)))
    async with NatsCluster(3) as cluster:
        rows.append(
            ("R3 cluster (3 local nodes), default sync", *await rates(cluster.nodes["n1"].url, 3))
        )
    async with NatsCluster(3, "jetstream { sync_interval: always }") as cluster:
        rows.append(("R3 cluster, sync_interval: always", *await rates(cluster.nodes["n1"].url, 3)))
    print("| setting | awaited publish, msg/s | pipelined publish_many, msg/s |")
    print("|---|---:|---:|")
    for label, seq, pipe in rows:
        print(f"| {label} | {seq:,.0f} | {pipe:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
