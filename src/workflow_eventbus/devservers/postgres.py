"""Run a private PostgreSQL server, for tests, the demo and the chaos suite.

``PgServer`` runs ``initdb`` into a fresh temporary directory, starts the
server on a random loopback port with trust authentication (loopback and a
unix socket inside the data directory only), and creates one database. As
root it runs the server binaries as the ``postgres`` user through ``runuser``
because ``initdb`` refuses to run as root. The data survives ``stop()``,
``kill()`` and ``restart()`` so outage scenarios can be replayed.

    async with PgServer() as pg:
        conn = await psycopg.AsyncConnection.connect(pg.dsn)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from ..core.errors import BrokerUnavailableError, ConfigError
from ..core.lifecycle import Service
from .processes import free_port

ENV_BINDIR = "EVENTBUS_PG_BINDIR"
_INSTALL_HINT = (
    f"install the server with `apt-get install postgresql`, or set {ENV_BINDIR} "
    "to the directory holding initdb and pg_ctl"
)
_POLL = 0.05
_SERVER_SETTINGS = (
    "listen_addresses = '127.0.0.1'",
    "max_connections = 300",
    "shared_buffers = 32MB",
    # Commits still write WAL to the OS before returning (synchronous_commit on), so
    # killing the server loses nothing acknowledged; only an OS crash could (no fsync).
    "fsync = off",
    "full_page_writes = off",
    "log_min_messages = warning",
)


def find_bindir() -> Path:
    """Directory of initdb/pg_ctl: ``$EVENTBUS_PG_BINDIR``, ``pg_config``, then Debian paths."""
    configured = os.environ.get(ENV_BINDIR, "")
    if configured:
        if (Path(configured) / "initdb").is_file():
            return Path(configured)
        raise ConfigError(ENV_BINDIR, "holds no initdb", value=configured, fix=_INSTALL_HINT)
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(p) for p in debian)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise ConfigError(
        "PostgreSQL server binaries", "initdb and pg_ctl not found", fix=_INSTALL_HINT
    )


def _version_key(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_state(pid: int) -> str:
    """One-letter state from /proc ("Z" for a zombie), or "" when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class PgServer(Service):
    """One private PostgreSQL server on 127.0.0.1 with its own data directory."""

    def __init__(
        self,
        *,
        dbname: str = "eventbus",
        bindir: str | Path | None = None,
        base_dir: str | Path | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.dbname = dbname
        self._bindir = Path(bindir) if bindir else None
        self._own_dir = base_dir is None
        self.base_dir = (
            Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="eventbus-pg-"))
        )
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self.ready_timeout = ready_timeout
        self.port = 0
        self._run_as = "postgres" if os.geteuid() == 0 else ""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def url(self) -> str:
        """The broker URL of a pgchannel broker on this server (its DSN)."""
        return self.dsn

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    async def teardown(self) -> None:
        await self.close()

    async def start(self) -> None:
        """initdb on first use, then start the server and wait until it accepts queries."""
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb()
        if not self.port:
            self.port = free_port()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                await self._pg_ctl(
                    "start",
                    "-w",
                    "-t",
                    str(int(self.ready_timeout)),
                    "-l",
                    str(self.log_file),
                    "-o",
                    f"-p {self.port} -k {self.data_dir}",
                )
                break
            except BrokerUnavailableError:
                # After a kill, backends of the old server may still hold shared memory.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(_POLL * 4)
        await self._wait_ready()
        await self._create_database()

    async def stop(self) -> None:
        """Stop the server (fast shutdown); the data directory is kept."""
        if (self.data_dir / "postmaster.pid").exists():
            await self._pg_ctl("stop", "-m", "fast", "-w", check=False)
        await self._wait_port_closed()

    async def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port."""
        await self.stop()
        if down_for > 0:
            await asyncio.sleep(down_for)  # the outage itself, not a readiness wait
        await self.start()

    async def kill(self) -> None:
        """SIGKILL the postmaster (a crash); ``start()`` recovers from it."""
        pid = self._postmaster_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await self._wait_gone(pid)
            # A killed postmaster may linger as a zombie, which pg_ctl takes for alive.
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / "postmaster.pid").unlink()
        await self._wait_port_closed()

    async def close(self) -> None:
        """Stop the server and delete a temporary data directory."""
        with contextlib.suppress(Exception):
            await self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _postmaster_pid(self) -> int:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return 0
        return int(first) if first.strip().isdigit() else 0

    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bindir / tool), *args]
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *argv]
        return argv

    async def _initdb(self) -> None:
        if self._run_as:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        await self._run(
            self._command(
                "initdb",
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ),
            what="initdb",
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# eventbus test server\n" + "\n".join(_SERVER_SETTINGS) + "\n")

    async def _pg_ctl(self, *args: str, check: bool = True) -> None:
        await self._run(
            self._command("pg_ctl", "-D", str(self.data_dir), *args),
            what=f"pg_ctl {args[0]}",
            check=check,
        )

    async def _run(self, argv: list[str], *, what: str, check: bool = True) -> None:
        # The postmaster inherits stdout: never pipe it, or waiting would hang.
        out_path = self.base_dir / "ctl.out"
        with out_path.open("w") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.base_dir
            )
            code = await proc.wait()
        if code != 0 and check:
            detail = out_path.read_text(errors="replace")[-2000:]
            if self.log_file.exists():
                detail += "\n" + self.log_file.read_text(errors="replace")[-2000:]
            raise BrokerUnavailableError(
                f"PostgreSQL test server: {what} failed with exit code {code}: {detail.strip()}; "
                f"check the server log in {self.base_dir}"
            )

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.admin_dsn, connect_timeout=2)
                await conn.close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(
                        f"PostgreSQL test server on port {self.port} not ready within "
                        f"{self.ready_timeout:g}s: {exc}; see {self.log_file}"
                    ) from exc
                await asyncio.sleep(_POLL)

    async def _wait_gone(self, pid: int) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if time.monotonic() > deadline or _process_state(pid) in ("", "Z", "X"):
                return
            await asyncio.sleep(_POLL)

    async def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not self.port or not _port_open(self.port) or time.monotonic() > deadline:
                return
            await asyncio.sleep(_POLL)

    async def _create_database(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.admin_dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
            if await cur.fetchone() is None:
                await conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname))
                )
