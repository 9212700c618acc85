"""Apache Kafka (KRaft) from the jars ``make install`` resolves: one node or a small cluster on loopback.

The tests, the benchmarks and the local default run on it, so that every Kafka guarantee the README
states (read_committed isolation, compaction, persistence, replication, the broker's message size
limit, ListOffsets) is exercised on the broker users run in production. Each node is a combined
broker+controller; its data directory holds ``server.properties`` (ports included) and the log, so
starting a node again on the same directory resumes its topics, offsets and groups.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from streams.exceptions import BrokerError
from streams.local.freezing import freeze, thaw
from streams.local.ports import free_port, free_port_block
from streams.resources import KAFKA_POM

__all__ = [
    "KAFKA_VERSION", "BROKER_SETTINGS", "kafka_libs_dir", "kafka_available", "install_kafka",
    "KafkaNode", "KafkaCluster",
]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
"""The Apache Kafka release the tests, benchmarks, local default and docker-compose.yml run."""

BROKER_SETTINGS: Mapping[str, str] = {
    "group.initial.rebalance.delay.ms": "0",   # a lone local member should not wait 3 s to be assigned
    "auto.create.topics.enable": "false",      # topics are created by `streamsearch run`, with their settings
    "num.partitions": "1",
    "offsets.topic.num.partitions": "10",      # the default 50 costs seconds at first start on 2 cores
    "transaction.state.log.num.partitions": "10",
}
"""Broker settings beyond Kafka's defaults, shared by the local broker and docker-compose.yml (a test
checks the compose file against them). The message size limit is Kafka's default (about 1 MB)."""

JAVA_MIN_VERSION = 17
_HEAP = os.environ.get("STREAMSEARCH_LOCAL_KAFKA_HEAP", "-Xmx512m -Xms128m")

G1_REGION = "-XX:G1HeapRegionSize=4m"
"""G1's region size for the local broker (before ``STREAMSEARCH_LOCAL_KAFKA_HEAP``, whose own wins). G1 sizes
regions from the heap, 1 MiB for this one, and allocates an object of half a region or more as "humongous",
straight into the old generation: each produce request's buffer (a record batch of up to ``MAX_BATCH_BYTES``,
``streams/kafka/producer.py``) was one, and each started a concurrent mark of the whole old generation
(``-Xlog:gc``: 144 such cycles while 200,000 vectors were inserted). With 4 MiB regions such a request is an
ordinary young object: the broker's GC went from 16-29 µs of CPU per inserted vector (four runs of five) to
0.7-1.2 (three of three; 8 and 16 MiB alike), ``benchmarks/insert_cpu.py``, 2026-12-07. A record over 2 MiB,
which goes in a batch of its own, is still humongous: rare, and no worse than before. Kafka's documentation
gives LinkedIn's 16 MiB for a 6 GiB heap; 4 MiB keeps 128 regions in this 512 MiB one. ``docker-compose.yml``
sets it in ``KAFKA_OPTS``."""


def kafka_libs_dir() -> Path:
    """Where the broker's jars live: ``STREAMSEARCH_LOCAL_KAFKA_LIBS``, else a per-user cache by version."""
    configured = os.environ.get("STREAMSEARCH_LOCAL_KAFKA_LIBS")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    # Named after the pom's content too, so that a changed pom resolves again instead of reusing old jars.
    stamp = hashlib.sha1(KAFKA_POM.read_bytes()).hexdigest()[:8] if KAFKA_POM.exists() else "installed"
    return cache / "streamsearch" / f"kafka_2.13-{KAFKA_VERSION}-{stamp}" / "libs"


def java_version() -> int | None:
    """The major version of ``java`` on PATH, or None when there is none."""
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    for token in out.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and "." in token:
            return int(head)
    return None


def kafka_available() -> bool:
    """Java ≥ 17 and the cached jars: what ``--broker auto`` needs to choose Apache Kafka."""
    version = java_version()
    return version is not None and version >= JAVA_MIN_VERSION and (
        kafka_libs_dir() / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()


def install_kafka(*, quiet: bool = True) -> Path:
    """Resolve the pinned Apache Kafka and its runtime dependencies from Maven Central into the cache.

    Idempotent: returns at once when the jars are there.

    :raises BrokerError: when Maven or the pom is missing, or resolution fails.
    """
    target = kafka_libs_dir()
    if (target / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None or not KAFKA_POM.exists():
        raise BrokerError(f"cannot resolve Apache Kafka {KAFKA_VERSION}: needs Maven (mvn) and {KAFKA_POM}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [mvn, "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
               f"-Dkafka.version={KAFKA_VERSION}", f"-Dkafka.libs={partial}"]
    result = subprocess.run(command + (["-q"] if quiet else []), capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout or "").strip().splitlines()[-5:] if quiet else []
        raise BrokerError(f"mvn could not resolve Apache Kafka {KAFKA_VERSION}: {' | '.join(tail)}")
    partial.rename(target)
    return target


def _new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (what StorageTool prints)."""
    while True:  # StorageTool reads an id that starts with "-" as an option (1 in 64 ids)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def _listener_port(listeners: str, name: str) -> int:
    """The port of listener ``name`` in a ``listeners`` value (``NAME://host:port,...``)."""
    for listener in listeners.split(","):
        listener_name, _, address = listener.strip().partition("://")
        if listener_name == name:
            return int(address.rsplit(":", 1)[1])
    raise BrokerError(f"no {name} listener in listeners={listeners}")


class KafkaNode:
    """One combined broker+controller process.

    :param data_dir: holds ``server.properties``, ``log4j2.properties``, ``server.log`` and ``log/``;
        an existing directory is started again with its own ports and data.
    :param node_id: the KRaft node id.
    :param voters: ``controller.quorum.voters`` (``id@host:port,...``); None for a single node.
    :param settings: broker settings over :data:`BROKER_SETTINGS` (first start only).
    :param properties: the complete ``server.properties`` of the first start, written as given instead
        of :meth:`properties` (no default added); node id and ports are read from it (``listeners``
        must have a ``PLAINTEXT`` and a ``CONTROLLER`` listener on loopback). docker-compose.yml's test
        starts Kafka with the configuration the compose file renders this way.
    """

    def __init__(self, data_dir: Path, *, node_id: int = 1, port: int | None = None,
                 controller_port: int | None = None, voters: str | None = None,
                 settings: Mapping[str, str] | None = None, properties: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.node_id = node_id
        self._properties_path = self.data_dir / "server.properties"
        self._given = None if properties is None or self._properties_path.exists() else dict(properties)
        if self._given is not None:
            self.node_id = int(self._given["node.id"])
        if self._properties_path.exists() or self._given is not None:
            stored = self._given if self._given is not None else _read_properties(self._properties_path)
            self.port = _listener_port(stored["listeners"], "PLAINTEXT")
            self.controller_port = _listener_port(stored["listeners"], "CONTROLLER")
            self._voters = stored["controller.quorum.voters"]
        else:
            if not port and not controller_port:  # one block: two draws could name one port twice
                port = free_port_block(2)
                controller_port = port + 1
            self.port = port or free_port()
            self.controller_port = controller_port or free_port()
            self._voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self._settings = dict(settings or {})
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def properties(self, *, replication: int) -> dict[str, str]:
        """The server.properties of a first start: listeners, quorum, replication of internal topics
        (the ``properties`` the node was given, if any)."""
        if self._given is not None:
            return dict(self._given)
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self._voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "offsets.topic.replication.factor": str(replication),
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min(2, replication)),
            "default.replication.factor": str(replication),
            **BROKER_SETTINGS,
            **self._settings,
        }

    def prepare(self, *, cluster_id: str, replication: int = 1) -> None:
        """Write the configuration and format the log directory, once (a restart keeps both)."""
        if self._properties_path.exists():
            return
        libs = kafka_libs_dir()
        if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            raise BrokerError(f"Apache Kafka {KAFKA_VERSION} is not installed in {libs}: run `make install`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n"
            "appender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.log_file}\n"
            "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = INFO\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
        )
        text = "".join(f"{k}={v}\n" for k, v in self.properties(replication=replication).items())
        staged = self._properties_path.with_suffix(".staged")
        staged.write_text(text)
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(staged)),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            reason = [line for line in lines if not line.lstrip().startswith(("at ", "... ", "SLF4J:"))]  # no trace
            raise BrokerError(f"kafka storage format failed: {' | '.join(reason or lines)[-500:]}")
        staged.rename(self._properties_path)

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java", G1_REGION, *_HEAP.split(), "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", str(kafka_libs_dir() / "*"), main, *args,
        ]

    def launch(self) -> None:
        """Start the JVM without waiting (a cluster's nodes must all be launched to form a quorum)."""
        if self.running:
            return
        with (self.data_dir / "stdout.log").open("ab") as out:
            self._process = subprocess.Popen(
                self._java("kafka.Kafka", str(self._properties_path)), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the CLI, which stops the broker cleanly
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    def check_alive(self) -> None:
        """:raises BrokerError: with the tail of the server log when the JVM has exited."""
        if self._process is not None and self._process.poll() is not None:
            tail = self.log_file.read_text(errors="replace")[-800:] if self.log_file.exists() else ""
            raise BrokerError(f"Apache Kafka node {self.node_id} exited with code {self._process.returncode}: "
                              f"{tail.strip().splitlines()[-1] if tail.strip() else 'see ' + str(self.data_dir)}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, a controlled shutdown; SIGKILL if it has not exited within ``timeout``."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused JVM cannot handle SIGTERM
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Kafka node did not stop in time; killing it", extra={"node": self.node_id})
                self._process.kill()
                self._process.wait()
        self._process = None

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see :meth:`stop`)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.terminate()

    def kill(self) -> None:
        """SIGKILL: a crash, no controlled shutdown (the log recovers at the next start)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the node (SIGSTOP): unreachable with its state kept, as a network partition looks."""
        if self._process is not None:
            freeze(self._process)

    def resume(self) -> None:
        if self._process is not None:
            thaw(self._process)


class KafkaCluster:
    """``size`` KRaft nodes on loopback (each broker+controller), data under ``data_dir/node-<id>``.

    A cluster of one is the single-node local broker. Internal topics are replicated
    ``min(3, size)`` times. Starting it again on the same ``data_dir`` resumes every node.
    """

    def __init__(self, data_dir: Path, *, size: int = 1, settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.size = size
        ids = range(1, size + 1)
        existing = [self.data_dir / f"node-{i}" / "server.properties" for i in ids]
        if all(path.exists() for path in existing):
            self.nodes = [KafkaNode(self.data_dir / f"node-{i}", node_id=i) for i in ids]
        else:
            base = free_port_block(2 * size)  # every node's two ports from one block: no port named twice
            controller_ports = {i: base + 2 * (i - 1) + 1 for i in ids}
            voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in controller_ports.items())
            self.nodes = [KafkaNode(self.data_dir / f"node-{i}", node_id=i, port=base + 2 * (i - 1),
                                    controller_port=controller_ports[i], voters=voters, settings=settings) for i in ids]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def start(self, timeout: float = 120.0) -> "KafkaCluster":
        """Format (first start), launch every node, wait until all of them are in the cluster's metadata.

        :raises BrokerError: when the jars are missing, a node exits, or the cluster is not whole in time.
        """
        cluster_id = _new_cluster_id()
        replication = min(3, self.size)
        for node in self.nodes:
            node.prepare(cluster_id=cluster_id, replication=replication)
        for node in self.nodes:
            node.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("Apache Kafka ready", extra={"bootstrap": self.bootstrap_servers, "version": KAFKA_VERSION})
        return self

    def wait_ready(self, timeout: float = 120.0, nodes: Sequence[KafkaNode] | None = None) -> None:
        """Wait until every node (or ``nodes``) is a registered broker in the cluster metadata.

        :raises BrokerError: when a node exits or ``timeout`` passes.
        """
        from confluent_kafka.admin import AdminClient

        wanted = {node.node_id for node in (nodes or self.nodes)}
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            for node in self.nodes:
                node.check_alive()
            live = [n for n in self.nodes if n.running]
            admin = AdminClient({"bootstrap.servers": ",".join(n.bootstrap_servers for n in live),
                                 "log_level": 0, "logger": logging.getLogger("streams.local.rdkafka")})
            try:
                brokers = set(admin.list_topics(timeout=2).brokers)
                if wanted <= brokers:
                    return
                last_error = f"brokers {sorted(brokers)} of {sorted(wanted)}"
            except Exception as exc:  # not listening yet
                last_error = str(exc)
            time.sleep(0.2)
        raise BrokerError(f"Apache Kafka not ready within {timeout:.0f}s ({last_error}); see {self.data_dir}")

    def stop(self) -> None:
        """Stop every node cleanly (controlled shutdown), all at once: a node stopped after the
        others would wait for a controller quorum that is gone."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop()

    def pause(self) -> None:
        """Freeze every node (SIGSTOP): the whole cluster unreachable, state kept."""
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":  # `python -m streams.local.apache_kafka`: what make install runs
    try:
        print(install_kafka())
    except BrokerError as exc:
        raise SystemExit(f"streamsearch: {exc}") from None
