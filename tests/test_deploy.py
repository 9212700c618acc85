"""docker-compose.yml cannot run here (no Docker engine); check that it describes the default flow."""

from pathlib import Path

import yaml

from streams.flow import load_flow

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_every_stage_of_the_default_flow_against_kraft_kafka() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    flow = load_flow(ROOT / "deploy" / "flows" / "hello.yml")
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for stage in flow.stages:
        service = services[stage.name]
        assert service["command"][:4] == ["run", "deploy/flows/hello.yml", "--stage", stage.name]
        assert service["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["index"]["deploy"]["replicas"] == flow.stage("index").replicas
