"""Run a private Apache Kafka (KRaft mode), for tests, the chaos suite and the bench.

``KafkaServer`` runs ``nodes`` combined broker+controller JVMs (one node, or three
with a three-voter quorum) from the broker jars that ``make setup`` fetches from
Maven Central (``scripts/kafka/fetch_jars.sh``, the pom next to it). Each node
has three loopback listeners on random ports:

- ``CLIENT``: what clients use (``bootstrap``/``url``): PLAINTEXT, or SASL
  SCRAM-SHA-512 with ``scram=(user, password)``, or TLS with ``tls=True``
  (a fresh CA in ``ca_file``), or both (SASL_SSL);
- ``INTERNAL``: plaintext, between brokers, and what this module itself asks for
  metadata (readiness, :meth:`KafkaServer.leader_of`) with a one-request client
  (:mod:`.kafka_wire`), so it needs no Kafka client library;
- ``CONTROLLER``: the KRaft quorum.

Ports and data survive :meth:`~KafkaServer.kill` + :meth:`~KafkaServer.restart`, so
crash scenarios can be replayed. Topics are never created implicitly
(``auto.create.topics.enable=false``).

    async with KafkaServer() as kafka:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BrokerUnavailableError, ConfigError
from ..core.lifecycle import Service
from .certs import make_certs
from .kafka_wire import Metadata, PartitionInfo, fetch_metadata, find_group_coordinator
from .processes import accepts_connections, free_port, terminate

KAFKA_VERSION = "4.1.1"  # = kafka.version in scripts/kafka/pom.xml
ENV_LIBS = "EVENTBUS_KAFKA_LIBS"
ENV_JAVA = "EVENTBUS_JAVA"
SCRAM_MECHANISM = "SCRAM-SHA-512"
_SETUP_HINT = (
    "run `make setup` (scripts/kafka/fetch_jars.sh fetches them from Maven Central "
    f"with mvn), or set {ENV_LIBS} to a directory holding the Kafka {KAFKA_VERSION} jars"
)
_POLL = 0.05
_READY_GROUP = "eventbus-devserver-ready"  # only ever looked up, never joined
_JVM_OPTS = (
    "-Xms64m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def kafka_libs_dir() -> Path:
    """Where the broker jars are: ``$EVENTBUS_KAFKA_LIBS``, else the setup script's cache."""
    configured = os.environ.get(ENV_LIBS, "")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "workflow-eventbus" / f"kafka-{KAFKA_VERSION}" / "libs"


def find_kafka_libs() -> Path:
    """The jar directory, checked to hold the broker (``kafka_2.13-*.jar``)."""
    libs = kafka_libs_dir()
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise ConfigError("Kafka broker jars", f"not found in {libs}", fix=_SETUP_HINT)
    return libs


def find_java() -> Path:
    """A ``java`` (17+): ``$EVENTBUS_JAVA``, ``$JAVA_HOME/bin/java``, then PATH."""
    candidates = [os.environ.get(ENV_JAVA, "")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append(shutil.which("java") or "")
    for candidate in filter(None, candidates):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ConfigError(
        "java",
        "no Java runtime found",
        fix=f"install Java 17+ (Debian: apt-get install openjdk-17-jre-headless), "
        f"or set {ENV_JAVA} or JAVA_HOME",
    )


def _cluster_id() -> str:
    """A Kafka cluster id (a base64url UUID); never one starting with '-' (a CLI flag)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies,
    so a killed test run leaves no broker behind (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Node:
    index: int  # also the KRaft node.id
    home: Path
    client_port: int
    internal_port: int
    controller_port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.home / "stdout.log", self.log_file):
            with contextlib.suppress(OSError):
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text.strip()


class KafkaServer(Service):
    """``nodes`` combined KRaft broker+controller processes on 127.0.0.1.

    ``workdir`` keeps the configs, logs and data after :meth:`stop` (to look at, or
    to ``start()`` the same object again); a new object formats a fresh cluster and
    needs an empty directory."""

    def __init__(
        self,
        *,
        nodes: int = 1,
        scram: tuple[str, str] | None = None,
        tls: bool = False,
        min_insync: int = 1,
        workdir: Path | None = None,
        heap: str = "384m",
        ready_timeout: float = 90.0,
    ) -> None:
        if nodes not in (1, 3):
            raise ConfigError(
                "KafkaServer nodes",
                "must be 1 or 3",
                value=nodes,
                fix="pass nodes=1 (one broker) or nodes=3 (a cluster with replication)",
            )
        if not 1 <= min_insync <= nodes:
            raise ConfigError(
                "KafkaServer min_insync",
                f"must be 1..{nodes}",
                value=min_insync,
                fix=f"pass min_insync from 1 to nodes ({nodes})",
            )
        if scram and any(ch in part for part in scram for ch in ',[]="'):
            raise ConfigError(  # no value: it is a credential
                "KafkaServer scram",
                'user and password must not hold , [ ] = "',
                fix='choose a user and password without , [ ] = or "',
            )
        self.nodes = nodes
        self.scram = scram
        self.tls = tls
        self.min_insync = min_insync
        self.heap = heap
        self.ready_timeout = ready_timeout
        self._own_dir = workdir is None
        self.base_dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kafka-"))
        self.ca_file: Path | None = None
        self._nodes: list[_Node] = []
        self._cluster_id = ""

    # -- addresses -------------------------------------------------------------
    @property
    def security_protocol(self) -> str:
        """The client listener's protocol, as Kafka clients name it."""
        if self.scram:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    @property
    def bootstrap(self) -> str:
        if not self._nodes:
            raise BrokerUnavailableError("Kafka dev server: not started; call start() first")
        return ",".join(f"127.0.0.1:{node.client_port}" for node in self._nodes)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def pid(self, node: int = 0) -> int | None:
        proc = self._nodes[node].proc if self._nodes else None
        return proc.pid if proc else None

    def running(self, node: int = 0) -> bool:
        return bool(self._nodes) and self._nodes[node].running

    def log_file(self, node: int = 0) -> Path:
        return self.base_dir / f"node-{node}" / "server.log"

    # -- lifecycle -------------------------------------------------------------
    async def teardown(self) -> None:
        await self.stop()

    async def start(self) -> None:
        """Format storage (first start only), start every node, wait until all serve."""
        if self._nodes and all(node.running for node in self._nodes):
            return
        java, libs = find_java(), find_kafka_libs()
        if not self._nodes:
            self._plan()
            self._write_configs()
            await asyncio.gather(*(self._format(java, libs, node) for node in self._nodes))
        for node in self._nodes:
            if not node.running:
                await self._spawn(java, libs, node)
        await self._wait_ready()

    async def kill(self, node: int = 0) -> None:
        """SIGKILL one node (a crash) and reap it; ports and data stay for restart()."""
        target = self._nodes[node]
        if target.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                target.proc.send_signal(signal.SIGKILL)
            await target.proc.wait()
            target.proc = None

    async def restart(self, node: int = 0) -> None:
        """Start one node again (stopping it first if it still runs) on the same ports
        and data; returns once every running node lists it."""
        target = self._nodes[node]
        if target.proc is not None:
            await terminate(target.proc, grace=10.0)
            target.proc = None
        await self._spawn(find_java(), find_kafka_libs(), target)
        await self._wait_ready()

    async def stop(self) -> None:
        """Stop every node; remove the data unless ``workdir`` was given.

        With our own temporary data the nodes are killed (nothing is kept); with a
        ``workdir`` they are asked to shut down cleanly first."""
        grace = 0.0 if self._own_dir else 10.0
        procs = [node.proc for node in self._nodes if node.proc is not None]
        if grace:
            await asyncio.gather(*(terminate(proc, grace) for proc in procs))
        else:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await asyncio.gather(*(proc.wait() for proc in procs))
        for node in self._nodes:
            node.proc = None
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- metadata --------------------------------------------------------------
    async def metadata(self, topics: list[str] | None = None) -> Metadata:
        """Cluster metadata as a running node sees it (the first that answers)."""
        errors: list[str] = []
        for node in self._nodes:
            if node.running:
                try:
                    return await fetch_metadata(node.internal_port, topics)
                except (OSError, TimeoutError) as exc:
                    errors.append(f"node {node.index}: {exc!r}")
        raise BrokerUnavailableError(f"Kafka dev server: no node answered ({'; '.join(errors)})")

    async def partitions(self, topic: str) -> dict[int, PartitionInfo]:
        """Leader, replicas and in-sync replicas of each partition of ``topic``."""
        meta = await self.metadata([topic])
        return meta.topics.get(topic, {})

    async def leader_of(self, topic: str, partition: int = 0) -> int:
        """The node leading ``topic``/``partition`` (waits while it has none, e.g. mid-election)."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            info = (await self.partitions(topic)).get(partition)
            if info is not None and info.leader >= 0 and self._nodes[info.leader].running:
                return info.leader
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"Kafka dev server: {topic}[{partition}] has no live leader ({info})"
                )
            await asyncio.sleep(_POLL)

    # -- internals -------------------------------------------------------------
    def _plan(self) -> None:
        self._cluster_id = _cluster_id()
        self._nodes = [
            _Node(i, self.base_dir / f"node-{i}", free_port(), free_port(), free_port())
            for i in range(self.nodes)
        ]
        if self.tls:
            certs = make_certs(self.base_dir / "tls")
            keystore = self.base_dir / "tls" / "keystore.pem"
            keystore.write_text(certs["server-key"].read_text() + certs["server"].read_text())
            self.ca_file = certs["ca"]

    def _properties(self, node: _Node) -> dict[str, str]:
        n = self.nodes
        voters = ",".join(f"{o.index}@127.0.0.1:{o.controller_port}" for o in self._nodes)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.index),
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://127.0.0.1:{node.client_port},"
            f"INTERNAL://127.0.0.1:{node.internal_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.client_port},"
            f"INTERNAL://127.0.0.1:{node.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{self.security_protocol},"
            "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(node.home / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(n),
            "min.insync.replicas": str(self.min_insync),
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.replication.factor": str(n),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": str(self.min_insync),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(n),
            "share.coordinator.state.topic.min.isr": str(self.min_insync),
            # A killed node is fenced (and its partitions led elsewhere) within ~3 s.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        if self.scram:
            props |= {
                "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                "listener.name.client.sasl.enabled.mechanisms": SCRAM_MECHANISM,
                f"listener.name.client.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                ),
            }
        if self.tls:
            props |= {
                "listener.name.client.ssl.keystore.type": "PEM",
                "listener.name.client.ssl.keystore.location": str(
                    self.base_dir / "tls" / "keystore.pem"
                ),
            }
        return props

    def _write_configs(self) -> None:
        for node in self._nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            text = "".join(f"{k}={v}\n" for k, v in self._properties(node).items())
            node.config_file.write_text(text)
            (node.home / "log4j2.properties").write_text(_LOG4J2.format(log=node.log_file))

    def _java_argv(self, java: Path, libs: Path, node: _Node, main: str) -> list[str]:
        return [
            str(java),
            f"-Xmx{self.heap}",
            *_JVM_OPTS,
            f"-Dlog4j2.configurationFile={node.home / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
        ]

    async def _format(self, java: Path, libs: Path, node: _Node) -> None:
        argv = self._java_argv(java, libs, node, "kafka.tools.StorageTool")
        argv += ["format", "-t", self._cluster_id, "-c", str(node.config_file)]
        if self.scram:
            user, password = self.scram
            argv += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        out = node.home / "format.log"
        with out.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink
            )
            code = await proc.wait()
        if code != 0:
            raise BrokerUnavailableError(
                f"Kafka dev server: formatting node {node.index} failed (exit {code}): "
                f"{out.read_text(errors='replace')[-2000:]}"
            )

    async def _spawn(self, java: Path, libs: Path, node: _Node) -> None:
        argv = [*self._java_argv(java, libs, node, "kafka.Kafka"), str(node.config_file)]
        with (node.home / "stdout.log").open("ab") as sink:
            node.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                cwd=node.home,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only prctl: safe after fork
            )

    async def _wait_ready(self) -> None:
        """Until every running node answers metadata listing every running node as a
        live broker and accepts connections on its client listener, and the group
        coordinator is up."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            running = [node for node in self._nodes if node.running]
            for node in self._nodes:
                if node.proc is not None and node.proc.returncode is not None:
                    raise BrokerUnavailableError(
                        f"Kafka dev server: node {node.index} exited "
                        f"(code {node.proc.returncode}) while starting; "
                        f"log {node.log_file}:\n{node.log_tail()}"
                    )
            if await self._all_see(running):
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"Kafka dev server: not ready within {self.ready_timeout:g}s "
                    f"(ready_timeout); logs in {self.base_dir}:\n{running[0].log_tail()}"
                )
            await asyncio.sleep(_POLL)

    async def _all_see(self, running: list[_Node]) -> bool:
        """Every running node lists every running node, and consumer groups have a
        coordinator (so a client's first group join does not wait for one)."""
        want = {node.index for node in running}
        try:
            for node in running:
                meta = await fetch_metadata(node.internal_port, [], timeout=1.0)
                if not want <= set(meta.brokers):
                    return False
                if not await accepts_connections(node.client_port):
                    return False
            coordinator = await find_group_coordinator(
                running[0].internal_port, _READY_GROUP, timeout=1.0
            )
        except (OSError, TimeoutError):
            return False
        return coordinator >= 0
