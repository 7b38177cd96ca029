"""A NATS server for one broker: its image, its ports and its config file.

JetStream is always on: the nats provider keeps streams, consumers and dead
letters in it, whatever ``jetstream.enabled`` says (a server without it would
refuse the app's first stream). ``jetstream.max_storage_bytes`` and
``max_memory_bytes`` become the server's ``max_file_store`` / ``max_memory_store``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...core.defaults import DEFAULT_NATS_VERSION
from ...core.errors import ConfigError
from .model import Broker

CLIENT_PORT = 4222
CLUSTER_PORT = 6222
MONITOR_PORT = 8222
HEALTH_PATH = "/healthz"  # nats-server's monitoring endpoint: 200 once JetStream is ready
LAME_DUCK = "30s"  # clients are moved off a stopping server over this long
GRACE_SECONDS = 60  # how long a stopping server is given (more than LAME_DUCK)


def version(broker: Broker) -> str:
    tag = broker.config.version or DEFAULT_NATS_VERSION
    if tag.lower() == "latest":
        raise ConfigError(
            f"{broker.where}: version",
            "floating tags are not allowed",
            value=broker.config.version,
            fix=f'pin a version tag, e.g. "{DEFAULT_NATS_VERSION}"',
        )
    return tag


def image(broker: Broker) -> str:
    """The official image's Alpine variant: it has a shell and ``nats-server`` on PATH,
    so the same command line works as an entrypoint or as its arguments."""
    return f"docker.io/library/nats:{version(broker)}-alpine"


def replicas(broker: Broker) -> int:
    return broker.config.replicas if broker.config.replicas > 0 else 1


def check_stream_replicas(broker: Broker, servers: int) -> None:
    """A stream cannot have more replicas than there are servers to hold them."""
    for stream in broker.streams:
        if stream.num_replicas > servers:
            raise ConfigError(
                f'eventbus.stream "{stream.name}": num_replicas',
                f"is more than the {servers} server(s) broker {broker.name} deploys",
                value=stream.num_replicas,
                fix=f"set the broker's replicas to at least {stream.num_replicas} "
                f"(3 for R3 streams) or lower num_replicas",
            )


def server_flags(broker: Broker, store_dir: str) -> list[str]:
    """``nats-server`` arguments for a single server with no config file (the JetStream
    limits have no flags: such a server uses the whole disk and memory it sees)."""
    return [
        "--jetstream",
        "--store_dir",
        store_dir,
        "--http_port",
        str(MONITOR_PORT),
        "--server_name",
        broker.name,
    ]


def server_conf(
    broker: Broker,
    *,
    server_name: str,
    store_dir: str,
    routes: Sequence[str] = (),
    header: str = "",
) -> str:
    """A nats-server config file; with ``routes`` a cluster member named after the broker."""
    js = broker.config.jetstream
    lines = [f"# {header}"] if header else []
    lines += [
        f"server_name: {server_name}",
        f"port: {CLIENT_PORT}",
        f"http_port: {MONITOR_PORT}",
        f'lame_duck_duration: "{LAME_DUCK}"',
        "",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
    ]
    if js.max_storage_bytes > 0:
        lines.append(f"  max_file_store: {js.max_storage_bytes}")
    if js.max_memory_bytes > 0:
        lines.append(f"  max_memory_store: {js.max_memory_bytes}")
    lines.append("}")
    if routes:
        lines += ["", "cluster {", f'  name: "{broker.name}"', f"  port: {CLUSTER_PORT}"]
        lines += ["  routes: [", *(f'    "{route}"' for route in routes), "  ]", "}"]
    return "\n".join(lines) + "\n"
