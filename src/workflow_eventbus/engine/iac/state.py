"""A provisioned broker's IaC state as the engine's IaC flow records it: its outputs
(``uri``, ``uri.<env>``), the connection string they give, and a reachability probe."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Output:
    value: str
    sensitive: bool = False


@dataclass(frozen=True, slots=True)
class State:
    outputs: Mapping[str, Output] = field(default_factory=dict)

    def output(self, key: str) -> str:
        found = self.outputs.get(key)
        return found.value if found else ""


def go_duration(seconds: float) -> str:
    """Go's time.Duration text: ``168h0m0s``, ``30s``, ``1m30s``, ``500ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - whole
    sec_text = f"{secs + frac:g}s"
    if hours:
        return f"{hours}h{minutes}m{sec_text}"
    if minutes:
        return f"{minutes}m{sec_text}"
    return sec_text


def connection_string(state: State, env: str = "") -> str:
    """``uri.<env>`` when present, else ``uri``."""
    uri = (env and state.output(f"uri.{env}")) or state.output("uri")
    if not uri:
        raise ConfigError(
            "state.outputs.uri",
            "not found",
            fix="provision the cluster first (its state must carry a uri output)",
        )
    return uri


async def probe(host: str, port: int, timeout: float = 2.0) -> str:
    """``healthy`` when a NATS server answers INFO on host:port, else ``unreachable``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return "unreachable"
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return "degraded"
    finally:
        writer.close()
    return "healthy" if line.startswith(b"INFO ") else "degraded"
