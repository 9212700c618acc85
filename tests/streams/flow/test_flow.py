from pathlib import Path

import pytest

from streams.exceptions import FlowConfigError
from streams.flow.parse import load_flow, parse_flow
from streams.resources import EXAMPLE_FLOWS


GOOD = """name: f
stages:
  segment:
    uses: Sentencizer
  encode:
    uses: TransformerEncoder
    with: {traversal_paths: [c]}
  index:
    shards: 3
    replicas: 2
  join: {}
"""


class TestFlow:
    @pytest.mark.parametrize("path", sorted(EXAMPLE_FLOWS.glob("*.yml")), ids=lambda p: p.name)
    def test_shipped_flows_load(self, path: Path) -> None:
        flow = load_flow(path)
        assert [s.name for s in flow.stages][-2:] == ["index", "join"]

    def test_topics_and_wiring(self) -> None:
        flow = parse_flow(GOOD)
        assert flow.shards == 3 and flow.stage("index").replicas == 2
        assert flow.input_topic("segment") == "f.ingest"
        assert flow.input_topic("encode") == "f.segmented"
        assert flow.stage("encode").config.traversal_paths == ("c",)

    def test_bad_yaml_names_the_line(self) -> None:
        with pytest.raises(FlowConfigError, match=r"<flow>:3: invalid YAML"):
            parse_flow("name: f\nstages:\n  encode: a: b\n")

    def test_unknown_executor_lists_the_ones_that_exist(self) -> None:
        text = GOOD.replace("uses: TransformerEncoder", "uses: BertEncoder")
        with pytest.raises(FlowConfigError, match=r":6: stage encode: unknown executor 'BertEncoder'; available: TransformerEncoder"):
            parse_flow(text)

    @pytest.mark.parametrize(("text", "message"), [
        (GOOD.replace("traversal_paths: [c]", "max_length: long"), "parameter 'max_length' must be int"),
        (GOOD.replace("traversal_paths: [c]", "pooling: mean"), "unknown parameter 'pooling'"),
        (GOOD.replace("shards: 3", "shards: 0"), "shards must be a positive integer"),
        (GOOD.replace("  join: {}\n", ""), "flow needs the stages join"),
        (GOOD.replace("name: f", "name: 'bad name!'"), "'name' must be"),
        (GOOD + "extra: 1\n", "unknown key 'extra'"),
        (GOOD.replace("  segment:\n    uses: Sentencizer\n", "") + "  segment: {}\n", "data-flow order"),
    ])
    def test_invalid_flows(self, text: str, message: str) -> None:
        with pytest.raises(FlowConfigError, match=message):
            parse_flow(text)
