"""A NATS server on DigitalOcean App Platform: one ``infra.container_service`` module.

The properties are the ones the DigitalOcean provider plugin's App Platform driver
reads (workflow-plugin-digitalocean, internal/drivers/app_platform_buildspec.go),
with the types it accepts: ``instance_count`` an integer, ``internal_ports`` a list
of integers (a comma-separated string is silently dropped by that driver),
``expose: internal`` (no public route; siblings in the same app dial
``<name>:4222``), ``health_check`` a map with an integer ``port``, ``image`` a
``docker.io/<org>/<repo>:<tag>`` reference and ``run_command`` a string.

What App Platform cannot give a NATS server, and so what is refused or stated:

- Persistence. A container's disk is ephemeral (lost at each deploy and restart)
  and no volume attaches to an App Platform component; Spaces is object storage,
  which JetStream's file store cannot use. Streams on this server live until the
  next deploy: fine for work queues that can be replayed, not for records.
- A cluster. The instances of one component share one internal name and cannot
  address each other for cluster routes, so ``replicas`` above 1 is refused (it
  would be independent servers, each with its own copy of nothing).
- Reachability. ``expose: internal`` ports are reachable only from components of
  the same App Platform app; the driver makes one app per module, so the app that
  talks to this server must be deployed inside it (or use the kubernetes target).
"""

from __future__ import annotations

from ...core.errors import ConfigError
from . import nats_conf
from .model import Broker, Built, InfraModule, Options, resource_name

NAME_LIMIT = 32  # App Platform app and component names: 2 to 32 characters
STORE_DIR = "/data/jetstream"  # on the container's ephemeral disk


def nats_app_platform(broker: Broker, options: Options) -> Built:
    if nats_conf.replicas(broker) > 1:
        raise ConfigError(
            f"{broker.where}: replicas",
            "App Platform instances cannot form a NATS cluster (they share one internal "
            "name, so no cluster routes), and separate servers would not share streams",
            value=broker.config.replicas,
            fix="set replicas to 1, or deploy_target kubernetes for an R3 cluster",
        )
    nats_conf.check_stream_replicas(broker, 1)
    name = resource_name(broker, "nats", limit=NAME_LIMIT)
    command = ["nats-server", *nats_conf.server_flags(broker, STORE_DIR)]
    config = {
        "provider": options.do_provider,
        "image": nats_conf.image(broker),
        "instance_count": 1,
        "run_command": " ".join(command),
        "expose": "internal",
        "internal_ports": [nats_conf.CLIENT_PORT, nats_conf.MONITOR_PORT],
        "health_check": {
            "http_path": nats_conf.HEALTH_PATH,
            "port": nats_conf.MONITOR_PORT,
            "initial_delay_seconds": 5,
            "period_seconds": 10,
        },
    }
    notes = [
        f"{name} (App Platform) keeps JetStream on the container's ephemeral disk: streams "
        "are lost at each deploy or restart (no volumes on App Platform; Spaces cannot hold "
        "a JetStream store). jetstream.max_storage_bytes/max_memory_bytes are not applied.",
        f"{name} is internal: only components of the same App Platform app reach it, at "
        f"nats://{name}:{nats_conf.CLIENT_PORT}; set the broker's dsn to that.",
    ]
    return Built(modules=[InfraModule(name, "infra.container_service", config)], notes=notes)
