"""The /metrics listener: prometheus_client's WSGI app on a thread this object owns.

A thread rather than an asyncio server: a scrape then never waits for the event
loop (a busy or stalled loop still answers scrapes, and rendering the text takes
no loop time from messages), and the listener works before any loop runs (a
library bus may be built first). The hot-path numbers are read whole under the
GIL and prometheus_client's gauges are lock-protected, so reading them from the
scrape thread is safe. Also the rules of ``EVENTBUS_METRICS_ADDR``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from ...core.errors import ConfigError

log = logging.getLogger("workflow_eventbus.engine.telemetry.metrics")

ADDR_ENV = "EVENTBUS_METRICS_ADDR"
PATH = "/metrics"
POLL_INTERVAL = 0.1  # seconds: how long close() may wait for the serving thread to notice


def parse_addr(raw: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every IPv4 interface); port 0 picks
    a free one (the log line says which)."""
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise addr_error(raw, "is not host:port")
        host, port_text = raw[1:end], raw[end + 2 :]
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or ":" in host:
            raise addr_error(raw, "is not host:port (an IPv6 host goes in brackets)")
    if not port_text.isdigit():
        raise addr_error(raw, "has no numeric port")
    port = int(port_text)
    if port > 65535:
        raise addr_error(raw, "has a port above 65535")
    return host or "0.0.0.0", port


def addr_error(raw: str, problem: str) -> ConfigError:
    return ConfigError(
        ADDR_ENV,
        problem,
        value=raw,
        fix="set it to host:port (e.g. 127.0.0.1:9464, [::1]:9464 or :9464 for every "
        "interface), or unset it to turn metrics off",
    )


class MetricsServer:
    """Serves one registry's text on ``PATH`` (404 elsewhere) until :meth:`close`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.address: tuple[str, int] | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve from a thread; the bound address. A host that does not
        resolve or an address that cannot be bound is a ConfigError naming
        ``EVENTBUS_METRICS_ADDR``."""
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        except OSError as exc:
            raise addr_error(shown, f"names a host that does not resolve ({exc})") from exc

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True

        try:
            server = make_server(host, port, self._app(), Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(
                ADDR_ENV,
                f"cannot listen there ({exc.strerror or exc})",
                value=shown,
                fix="pick a free port on a local address (port 0: any free port)",
            ) from exc
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="eventbus metrics",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        bound = server.server_address
        bound_host = bound[0] if isinstance(bound[0], str) else bound[0].decode()
        self.address = (bound_host, int(bound[1]))
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log.info("metrics: serving Prometheus text on http://%s:%d%s", shown, bound[1], PATH)
        return self.address

    def _app(self) -> Any:
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "") in (PATH, PATH + "/"):
                result: Iterable[bytes] = metrics_app(environ, start_response)
                return result
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {PATH}\n".encode()]

        return app

    def close(self) -> None:
        """Stop serving, close the socket and join the thread; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # returns once serve_forever has left (within POLL_INTERVAL)
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr (the engine logs the plugin's stderr)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
