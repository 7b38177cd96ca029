"""Shared fixtures: a real nats-server and a real PostgreSQL, started per session."""

# Before grpc loads: gRPC fork handlers off, as for every command (see workflow_eventbus.cli).
import workflow_eventbus.cli  # noqa: F401

pytest_plugins = ["fixtures_nats", "fixtures_pg", "fixtures_prometheus", "fixtures_kafka"]
