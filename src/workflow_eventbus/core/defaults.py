"""Every default value the bus applies when a setting is left unset, with its unit and bounds.

One place: the modules, steps, trigger, providers and the schemas the plugin
advertises (GetModuleSchemas ``default_value``) import these names; the proto
field comments in ``proto/eventbus.proto`` state the same values and a unit
test holds the two together. Durations are in seconds (float).
"""

from __future__ import annotations

# --- broker (eventbus.broker) ------------------------------------------------------
DEFAULT_CONNECT_TIMEOUT = 10.0  # s; connect_timeout; > 0. pgchannel: also each operation's
DEFAULT_PG_OPERATION_TIMEOUT = 5.0  # s; pgchannel operations when connect_timeout is unset
DEFAULT_PG_SCHEMA = "public"  # schema; [a-z_][a-z0-9_]{0,62}
DEFAULT_PG_MAX_CONNS = 16  # connections in the pgchannel pool; max_conns >= 0 (0 = default)
DEFAULT_PG_POLL_INTERVAL = 1.0  # s; poll_interval, > 0: how often pgchannel looks without NOTIFY

# --- stream (eventbus.stream) ------------------------------------------------------
DEFAULT_DUPLICATE_WINDOW = 120.0  # s; duplicate_window (JetStream's default); capped at max_age
DEFAULT_KAFKA_PARTITIONS = 1  # kafka: partitions per topic of a stream; 0..4096 (0 = default)
DEFAULT_KAFKA_REPLICATION = 3  # kafka: replicas per topic, at most the brokers; 0 = default
DEFAULT_KAFKA_DEDUP_IDS = 100_000  # kafka: msg ids a publisher remembers per stream (the window's)
DEFAULT_KAFKA_PORT = 9092  # kafka: port of a server named without one in the URL
DEFAULT_KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"  # kafka.sasl_mechanism with a user

# --- consumer (eventbus.consumer) and trigger --------------------------------------
DEFAULT_ACK_WAIT = 30.0  # s; ack_wait (JetStream's default); else the stream's ack_wait
DEFAULT_MAX_ACK_PENDING = 1000  # messages; max_ack_pending >= 0 (JetStream's default)
DEFAULT_MAX_IN_FLIGHT = 1  # handlers at once per trigger; max_in_flight >= 0 (1 keeps order)
DEFAULT_BACKOFF = (1.0, 5.0, 30.0)  # s; waits before redelivery by attempt; each > 0
DEFAULT_DRAIN_TIMEOUT = 30.0  # s; drain_timeout: how long a stopping trigger lets handlers finish

# --- the plugin's calls to the engine (TriggerWorkflow runs a whole pipeline) ----------
DEFAULT_CALLBACK_TIMEOUT = 300.0  # s; WORKFLOW_EVENTBUS_CALLBACK_TIMEOUT, > 0: deadline per call
DEFAULT_CALLBACK_TRANSPORT = "h2"  # WORKFLOW_EVENTBUS_CALLBACK_TRANSPORT: h2 or grpc

# --- traces (engine/telemetry/tracing.py) --------------------------------------------
DEFAULT_TRACES_SERVICE_NAME = "workflow-plugin-eventbus"  # OTEL_SERVICE_NAME when unset

# --- steps -------------------------------------------------------------------------
DEFAULT_CONSUME_MAX_WAIT = 5.0  # s; step.eventbus.consume max_wait (the Go client's default)

# --- dead letters (dlq list) ---------------------------------------------------------
DEFAULT_DEAD_LETTER_LIMIT = 100  # letters per list; --limit >= 0
DEFAULT_DEAD_LETTER_COUNT = 10_000  # letters `status` counts at most; --dead-letter-limit

# --- IaC declarations ----------------------------------------------------------------
DEFAULT_NATS_VERSION = "2.10"  # image tag of a declared NATS server; "latest" is refused
DEFAULT_KAFKA_VERSION = "3.7"  # version of a declared Kafka cluster
DEFAULT_JETSTREAM_VOLUME = "10Gi"  # PVC size of a generated NATS pod without limits.storage
DEFAULT_DO_IAC_PROVIDER = "do-provider"  # iac.provider module generated App Platform modules name
DEFAULT_INFRA_OUT = "eventbus.infra.yaml"  # the infra command's file, next to the app config

# --- bounds (not defaults, but limits the same rules share) --------------------------
MAX_BATCH = 1000  # messages per publish batch, consume, or ack call (the Go plugin's cap)
MAX_NAME = 255  # characters in a stream or consumer name (JetStream's limit)
