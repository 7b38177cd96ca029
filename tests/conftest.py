"""Shared fixtures: a real nats-server and a real PostgreSQL, started per session."""

pytest_plugins = ["fixtures_nats", "fixtures_pg", "fixtures_prometheus"]
