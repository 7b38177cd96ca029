"""Shared fixtures: a real nats-server and a real PostgreSQL, started per session."""

import importlib.util

pytest_plugins = [
    name for name in ("fixtures_nats", "fixtures_pg") if importlib.util.find_spec(name) is not None
]
