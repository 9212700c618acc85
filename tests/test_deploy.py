"""docker-compose.yml cannot run here (no Docker engine): check that it describes the default flow and
runs the Kafka the tests run, then start that Kafka (the Maven-resolved jars) with the server.properties
the compose file's environment renders, so that its configuration is exercised, not only parsed."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.exceptions import BrokerError
from streams.flow.executors import RANKERS
from streams.flow.parse import load_flow
from streams.local.apache_kafka import BROKER_SETTINGS, G1_REGION, KAFKA_VERSION, KafkaNode, install_kafka
from streams.local.ports import free_port_block
from streams.resources import EXAMPLE_FLOWS
from streams.stages.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]

NOT_BROKER_PROPERTIES = frozenset({
    "KAFKA_VERSION", "KAFKA_HEAP_OPTS", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL", "KAFKA_LOG4J_LOGGERS",
    "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_JMX_HOSTNAME",
})
"""``KAFKA_*`` variables the apache/kafka image does not render into server.properties (JVM and logging
options; ``kafka.docker.KafkaDockerWrapper``). ``CLUSTER_ID`` has no ``KAFKA_`` prefix."""


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _kafka_environment() -> dict[str, str]:
    """The kafka service's environment as the container sees it: every value a string."""
    env = _compose()["services"]["kafka"]["environment"]
    assert isinstance(env, dict), "the kafka service's environment should be a mapping"
    for key, value in env.items():
        # Compose refuses YAML booleans (and null would unset the variable): quote "true"/"false".
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{key}: {value!r}"
    return {key: str(value) for key, value in env.items()}


def _property_name(variable: str) -> str:
    """KAFKA_FOO_BAR -> foo.bar, as the image renders it (``___`` stands for ``-``, ``__`` for ``_``)."""
    return variable.removeprefix("KAFKA_").lower().replace("_", ".").replace("...", "-").replace("..", "_")


def _compose_server_properties(env: Mapping[str, str]) -> dict[str, str]:
    """The server.properties the apache/kafka image renders from ``env``: its broker settings only
    (the image adds none of its defaults once one is given)."""
    return {_property_name(key): value for key, value in env.items()
            if key.startswith("KAFKA_") and key not in NOT_BROKER_PROPERTIES}


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}."""
    parsed = {}
    for listener in value.split(","):
        name, _, address = listener.strip().partition("://")
        host, _, port = address.rpartition(":")
        parsed[name] = (host, int(port))
    return parsed


def _volume_target(service: Mapping[str, Any], volume: str) -> str:
    for mount in service["volumes"]:
        source, target = (mount.split(":")[:2] if isinstance(mount, str) else (mount["source"], mount["target"]))
        if source == volume:
            return str(target)
    raise AssertionError(f"volume {volume} is not mounted")


def _external_port(service: Mapping[str, Any]) -> int:
    """The container port published to the host (what ``localhost:9094`` clients reach)."""
    [published] = service["ports"]
    host_port, container_port = str(published).split(":")[-2:]
    assert host_port == container_port, published
    return int(container_port)


def test_compose_runs_every_stage_of_the_default_flow_against_kraft_kafka() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    flow = load_flow(EXAMPLE_FLOWS / "hello.yml")
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert G1_REGION in services["kafka"]["environment"]["KAFKA_OPTS"].split()  # as the local broker's JVM
    for stage in flow.stages:
        service = services[stage.name]
        assert service["command"][:4] == ["run", str(EXAMPLE_FLOWS.relative_to(ROOT) / "hello.yml"), "--stage", stage.name]
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        # No malloc huge pages: the index stage collapses its vectors itself (processors/index/huge_pages.py)
        assert "glibc.malloc.hugetlb" not in service["environment"].get("GLIBC_TUNABLES", ""), stage.name
    assert set(services) - {"kafka"} == {stage.name for stage in flow.stages}, "one service per stage, no other"
    for stage in flow.stages:
        if KINDS[stage.name].stateful:  # its shards on a volume, as many replicas as the flow says
            service = services[stage.name]
            state_dir = service["command"][service["command"].index("--state-dir") + 1]
            assert state_dir in [mount.split(":")[1] for mount in service["volumes"]]
            assert service["deploy"]["replicas"] == stage.replicas


def test_the_image_installs_the_extras_of_every_executor_of_every_stage_kind() -> None:
    executors = [executor for kind in KINDS.values() for executor in kind.executors.values()] + list(RANKERS.values())
    wanted = {executor.extra for executor in executors if executor.extra}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    [installed] = re.findall(r'pip install --no-cache-dir "\.\[([a-z,]+)\]"', dockerfile)
    assert set(installed.split(",")) == wanted


def test_compose_kafka_is_the_tested_release_with_the_tested_settings_and_its_log_on_the_volume(tmp_path: Path) -> None:
    kafka = _compose()["services"]["kafka"]
    env = _kafka_environment()
    properties = _compose_server_properties(env)
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert "kafka-data" in _compose()["volumes"]
    assert env.get("KAFKA_LOG_DIRS") == _volume_target(kafka, "kafka-data"), "the log must be on the volume"
    assert {key: properties.get(key) for key in BROKER_SETTINGS} == dict(BROKER_SETTINGS)
    # Nothing the local broker does not set either (such as a message size limit of its own), and the
    # same values but for addresses and paths.
    local = KafkaNode(tmp_path, node_id=int(properties["node.id"])).properties(replication=1)
    assert sorted(properties.keys() - local.keys()) == []
    addresses = {"listeners", "advertised.listeners", "listener.security.protocol.map", "controller.quorum.voters",
                 "log.dirs"}
    assert {k: v for k, v in properties.items() if k not in addresses} == {
        k: local[k] for k in properties if k not in addresses}
    assert "CLUSTER_ID" in env, "the image formats the volume with CLUSTER_ID"
    listeners = _listeners(properties["listeners"])
    advertised = _listeners(properties["advertised.listeners"])
    [(name, (host, port))] = [(n, a) for n, a in listeners.items() if a[1] == _external_port(kafka)]
    assert advertised[name] == ("localhost", port), "host clients reach the published port on localhost"
    controller = properties["controller.listener.names"]
    assert properties["controller.quorum.voters"].split("@")[1].endswith(f":{listeners[controller][1]}")


# --- the compose configuration on the Maven-resolved Kafka ----------------------------------------------


def _on_loopback(properties: Mapping[str, str], log_dir: Path) -> dict[str, str]:
    """``properties`` with only hosts, ports and the log path changed: every listener on a free
    127.0.0.1 port (advertised as such), the quorum voter on the controller listener, the log in ``log_dir``."""
    listeners = _listeners(properties["listeners"])
    base = free_port_block(len(listeners))  # one block: separate draws could name one port twice (a CI's red)
    ports = {name: base + offset for offset, name in enumerate(listeners)}
    controller = properties["controller.listener.names"].split(",")[0]
    node_id, _, _ = properties["controller.quorum.voters"].partition("@")
    return {
        **properties,
        "listeners": ",".join(f"{name}://127.0.0.1:{ports[name]}" for name in listeners),
        "advertised.listeners": ",".join(f"{name}://127.0.0.1:{ports[name]}"
                                         for name in _listeners(properties["advertised.listeners"])),
        "controller.quorum.voters": f"{node_id}@127.0.0.1:{ports[controller]}",
        "log.dirs": str(log_dir),
    }


def _log_tail(node: KafkaNode, lines: int = 15) -> str:
    """The errors Kafka logged (each with the line after it: the exception) and the last ``lines`` lines."""
    text = ""
    for log in (node.data_dir / "stdout.log", node.log_file):
        content = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [f"{line} {content[i + 1].strip() if i + 1 < len(content) else ''}"
                  for i, line in enumerate(content) if "] ERROR " in line or "] FATAL " in line]
        shown = errors[-8:] + (["..."] if errors else []) + content[-lines:]
        text += f"--- {log}\n" + "\n".join(shown or ["(empty)"]) + "\n"
    return text


def _start(node: KafkaNode, bootstrap: str, cluster_id: str, timeout: float = 120.0) -> None:
    """Format (first start) and launch ``node``; wait until it answers on ``bootstrap`` as a broker.
    Fails with the tail of Kafka's log when formatting fails, the JVM exits, or ``timeout`` passes."""
    try:
        node.prepare(cluster_id=cluster_id)
    except BrokerError as exc:
        pytest.fail(f"Kafka refused the compose configuration: {exc}\n{_log_tail(node)}")
    node.launch()
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0,
                         "logger": logging.getLogger("tests.deploy.rdkafka")})
    deadline = time.monotonic() + timeout
    while True:
        if not node.running:
            pytest.fail(f"Kafka exited with the compose configuration:\n{_log_tail(node)}")
        try:
            if node.node_id in admin.list_topics(timeout=2).brokers:
                return
        except KafkaException:
            pass  # not listening yet
        if time.monotonic() > deadline:
            pytest.fail(f"Kafka not ready on {bootstrap} within {timeout:.0f}s:\n{_log_tail(node)}")
        time.sleep(0.3)


def _client(bootstrap: str, **config: object) -> dict[str, object]:
    return {"bootstrap.servers": bootstrap, "logger": logging.getLogger("tests.deploy.rdkafka"), **config}


def _read_one(bootstrap: str, topic: str, group: str, *, subscribe: bool) -> tuple[bytes | None, bytes | None]:
    """The first committed record of ``topic``: through the group (committing it) or from offset 0."""
    consumer = Consumer(_client(bootstrap, **{"group.id": group, "isolation.level": "read_committed",
                                              "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    try:
        if subscribe:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                if subscribe:
                    consumer.commit(message=msg, asynchronous=False)
                return msg.key(), msg.value()
        raise AssertionError(f"no record read from {topic} in 60 s")
    finally:
        consumer.close()


COORDINATOR_LOADING = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                       KafkaError.COORDINATOR_NOT_AVAILABLE)
"""What a restarted broker answers a group's offset fetch while it loads the offsets topic (seen in CI:
``NOT_COORDINATOR`` from ``committed``, after the broker had already served a fetch)."""


def _committed_once_loaded(consumer: Consumer, partition: TopicPartition, timeout_s: float = 60) -> TopicPartition:
    """The group's committed offset of ``partition``, asked again while the coordinator is still loading."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            [committed] = consumer.committed([partition], timeout=30)
            return committed
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError) or error.code() not in COORDINATOR_LOADING \
                    or time.monotonic() > deadline:
                raise
        time.sleep(0.2)  # the interval between two asks of a condition, not a synchronisation by sleeping


@pytest.mark.kafka
def test_kafka_starts_with_the_compose_configuration_and_keeps_records_across_a_restart(tmp_path: Path) -> None:
    install_kafka()  # a no-op after `make install`; never a skip
    kafka = _compose()["services"]["kafka"]
    env = _kafka_environment()
    volume = tmp_path / "kafka-data"  # what the kafka-data volume is to the container
    properties = _on_loopback(_compose_server_properties(env), volume)
    external = [name for name, (_, port) in _listeners(_compose_server_properties(env)["listeners"]).items()
                if port == _external_port(kafka)][0]
    bootstrap = f"127.0.0.1:{_listeners(properties['listeners'])[external][1]}"
    topic, group = "compose-check", f"compose-{uuid.uuid4().hex[:8]}"

    node = KafkaNode(tmp_path / "node", properties=properties)
    try:
        _start(node, bootstrap, env["CLUSTER_ID"])
        admin = AdminClient(_client(bootstrap))
        # Kafka ignores a name it does not know (a typo): every compose setting must be a broker config
        # the broker reports with the compose value.
        [described] = admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, str(node.node_id))]).values()
        running = {name: entry.value for name, entry in described.result(30).items()}
        differing = {name: (value, running.get(name)) for name, value in properties.items()
                     if running.get(name) != value}
        assert not differing, f"compose settings the broker does not run with, (compose, broker): {differing}"
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
        # A transaction and a group commit: the transaction state log and the offsets topic must be
        # creatable with the compose settings on a single broker.
        producer = Producer(_client(bootstrap, **{"transactional.id": "compose-check"}))
        producer.init_transactions(60)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"durable")
        producer.commit_transaction(60)
        assert _read_one(bootstrap, topic, group, subscribe=True) == (b"k", b"durable")
    finally:
        node.stop()  # SIGTERM: a controlled shutdown, as `docker compose stop` does

    assert (volume / f"{topic}-0").is_dir(), f"the log is not in log.dirs: {sorted(p.name for p in volume.iterdir())}"
    assert f"cluster.id={env['CLUSTER_ID']}" in (volume / "meta.properties").read_text()

    again = KafkaNode(tmp_path / "node")  # the same server.properties and log directory
    try:
        _start(again, bootstrap, env["CLUSTER_ID"])
        assert _read_one(bootstrap, topic, f"other-{group}", subscribe=False) == (b"k", b"durable")
        consumer = Consumer(_client(bootstrap, **{"group.id": group}))
        try:
            committed = _committed_once_loaded(consumer, TopicPartition(topic, 0))
        finally:
            consumer.close()
        assert committed.offset == 1, "the group's commit survives"
    finally:
        again.stop()
