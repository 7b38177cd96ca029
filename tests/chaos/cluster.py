"""A 3-node nats-server cluster on loopback with JetStream (for tests/chaos).

Each node is an EmbeddedNats with a config file naming the server and its
routes; client ports stay random, route ports are picked free up front.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path

from workflow_eventbus.core.lifecycle import Service
from workflow_eventbus.devservers.nats_server import EmbeddedNats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsCluster(Service):
    def __init__(self, size: int = 3, extra_config: str = "") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="nats-cluster-"))
        route_ports = [_free_port() for _ in range(size)]
        self.nodes: dict[str, EmbeddedNats] = {}
        for index, port in enumerate(route_ports):
            name = f"n{index + 1}"
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports if p != port)
            folder = self.base / name
            folder.mkdir()
            config = folder / "server.conf"
            config.write_text(
                f"server_name: {name}\n"
                f"{extra_config}\n"
                "cluster {\n"
                "  name: chaos\n"
                f"  listen: 127.0.0.1:{port}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.nodes[name] = EmbeddedNats(store_dir=folder, config_file=config)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values() if node.running]

    async def start(self) -> None:
        await asyncio.gather(*(node.start() for node in self.nodes.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes.values()))
        shutil.rmtree(self.base, ignore_errors=True)

    async def teardown(self) -> None:
        await self.stop()
