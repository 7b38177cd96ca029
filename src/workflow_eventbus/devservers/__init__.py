"""Servers for development, tests, the demo and the bench; never used by the plugin.

``nats_server`` runs a private nats-server with JetStream, ``postgres`` a private
PostgreSQL cluster, ``kafka`` a private Kafka (KRaft), each on a random loopback port with readiness checked;
``host`` is the engine side of the plugin protocol (it launches the plugin
process as the engine does); ``engine`` runs the real workflow engine
(cmd/server, from ``interop/build.sh``) with the plugin installed, for the
engine bench. :data:`DEV_SERVERS` maps a provider name to the
server a demo or bench starts for it; each has a ``url`` once started.
"""

from __future__ import annotations

from .kafka import KafkaServer
from .nats_server import EmbeddedNats
from .postgres import PgServer

DEV_SERVERS: dict[str, type[EmbeddedNats] | type[PgServer] | type[KafkaServer]] = {
    "nats": EmbeddedNats,
    "pgchannel": PgServer,
    "kafka": KafkaServer,
}
