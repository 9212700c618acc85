from pathlib import Path

import pytest

from streams.exceptions import FlowConfigError
from streams.flow.parse import load_flow, parse_flow
from streams.resources import EXAMPLE_FLOWS
from streams.stages.kinds import KINDS


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
        (GOOD + "search: {retrieval: hybrid}\n", r"retrieval 'hybrid' needs the lexical arm: give the index stage"),
        (GOOD + "search: {retrieval: sparse}\n", "retrieval must be one of dense, lexical, hybrid, got 'sparse'"),
        (GOOD + "search: {fusion: max}\n", "fusion must be one of rrf, dbsf, linear"),
        (GOOD + "search: {top_k: -3}\n", r"search: parameter 'top_k' must be an integer in 1\.\.1000, got -3"),
        (GOOD + "search: {top_k: true}\n", "parameter 'top_k' must be an integer"),
        (GOOD + "search: {chunk_oversample: 100000}\n", "parameter 'chunk_oversample' is 100000; the limit"),
        (GOOD + "search: {top_k: 1000, chunk_oversample: 100}\n",
         r"search: queries × top_k × chunk_oversample = 1 × 1000 × 100 = 100000; the limit max_fetch is 20000"),
        (GOOD + "search: {timeout_s: soon}\n", r"timeout_s must be a number of seconds in \(0, 300\], got 'soon'"),
        (GOOD + "search: {timeout_s: .nan}\n", "timeout_s must be a number of seconds"),
        (GOOD + "search: {timeout_s: 0}\n", "timeout_s must be a number of seconds"),
        (GOOD + "search: {fetch_wait_ms: 2.5}\n", r"fetch_wait_ms must be null \(by the broker\) or whole milliseconds"),
        (GOOD + "search: {fetch_wait_ms: -1}\n", "fetch_wait_ms must be null"),
        (GOOD + "search: {fetch_wait_ms: '5'}\n", "fetch_wait_ms must be null"),
        (GOOD + "state_dir: 5\n", "state_dir must be a directory path, got 5"),
        (GOOD + "state_dir: [a]\n", r"state_dir must be a directory path, got \['a'\]"),
        (GOOD + "state_dir: ''\n", "state_dir must be a directory path"),
        (GOOD.replace("shards: 3", "shards: true"), "shards must be a positive integer"),
        (GOOD.replace("  join: {}", "  join: {replicas: true}"), "replicas must be a positive integer"),
        (GOOD.replace("uses: TransformerEncoder", "uses: [TransformerEncoder]"), "'uses' must name an executor"),
        (GOOD.replace("  join: {}", "  join: {metrics_port: true}"), "metrics_port must be a port number"),
        (GOOD.replace("    shards: 3", "    ranker: 5\n    shards: 3"), r"'ranker' must be a mapping \(uses, with\), got 5"),
        (GOOD.replace("    shards: 3", "    ranker: {with: 5}\n    shards: 3"), "the ranker's 'with' must be a mapping"),
        (GOOD.replace("    shards: 3", "    ranker: {uses: [a]}\n    shards: 3"), r"unknown ranker \['a'\]"),
    ])
    def test_invalid_flows(self, text: str, message: str) -> None:
        with pytest.raises(FlowConfigError, match=message):
            parse_flow(text)

    def test_the_search_defaults_a_flow_may_set(self) -> None:
        search = parse_flow(GOOD + "search: {top_k: 20, timeout_s: 2.5, chunk_oversample: 3, fetch_wait_ms: 0}\n").search
        assert (search.top_k, search.timeout_s, search.chunk_oversample, search.fetch_wait_ms) == (20, 2.5, 3, 0)
        assert parse_flow(GOOD).search.fetch_wait_ms is None  # by the broker

    @pytest.mark.parametrize(("text", "message"), [
        (GOOD.replace("    uses: Sentencizer\n", "    shards: 2\n"), r"<flow>:4: only the index stage has shards$"),
        (GOOD.replace("    uses: Sentencizer\n", "    ranker: {}\n"), r"<flow>:4: only the index stage has a ranker$"),
        (GOOD.replace("    uses: Sentencizer\n", "    filter_by: [title]\n"),
         r"<flow>:4: only the encode and index stages take filter_by$"),
        (GOOD.replace("    with: {traversal_paths: [c]}\n", "    query_language: []\n"),
         r"<flow>:7: only the index and join stages take query_language$"),
        (GOOD.replace("  join: {}", "  join: {uses: Joiner}"),
         r"<flow>:11: the join stage takes no executor: it merges shard results by score \(query_language applies\)$"),
        (GOOD.replace("  join: {}", "  rank: {}"), rf"<flow>:11: unknown stage 'rank'; stages are {', '.join(KINDS)}$"),
    ])
    def test_a_key_or_stage_the_table_of_stage_kinds_does_not_allow_names_those_it_does(self, text: str,
                                                                                          message: str) -> None:
        with pytest.raises(FlowConfigError, match=message):
            parse_flow(text)

    def test_each_stage_reads_what_the_stage_before_it_writes(self) -> None:
        flow = parse_flow(GOOD.replace("  segment:\n    uses: Sentencizer\n", ""))
        assert flow.input_topic("encode") == "f.ingest" and flow.output_topic("encode") == "f.encoded"
        assert flow.input_topic("index") == "f.encoded"
        with pytest.raises(KeyError):
            flow.output_topic("join")


class TestWithoutAModel:
    """``stages:`` without ``encode``: documents and queries carry their vectors."""

    TEXT = "name: v\nstages:\n  index: {with: {dim: 8}, shards: 2}\n  join: {}\n"

    def test_the_shards_read_ingest_and_the_join_fans_out(self) -> None:
        from streams.stages.dispatch import ByTopic
        from streams.stages.kinds import build_stage

        flow = parse_flow(self.TEXT)
        assert not flow.has_model and [s.name for s in flow.stages] == ["index", "join"]
        assert flow.input_topic("index") == "v.ingest"
        join = build_stage(flow, "join").query_path
        assert join is not None and join.topics == ["v.partials", "v.query"] and isinstance(join.handler, ByTopic)
        flow.check_dimensions()  # no encoder: nothing to compare, no model looked for

    def test_only_the_shards_index_path_commits_on_an_interval(self, tmp_path: Path) -> None:
        """Its shards store the offsets they applied; every other path commits after each batch."""
        from streams.stages.kinds import SHARD_COMMIT_INTERVAL_S, build_stage

        flow = parse_flow(self.TEXT + f"state_dir: {tmp_path}\n")
        index, join = build_stage(flow, "index"), build_stage(flow, "join")
        assert index.index_path is not None and index.index_path.commit_interval_s == SHARD_COMMIT_INTERVAL_S > 0
        assert index.query_path is not None and index.query_path.commit_interval_s == 0
        assert join.query_path is not None and join.query_path.commit_interval_s == 0

    def test_a_segmenter_alone_feeds_the_shards(self) -> None:
        flow = parse_flow(self.TEXT.replace("stages:\n", "stages:\n  segment: {}\n"))
        assert flow.input_topic("index") == "v.segmented" and not flow.has_model

    def test_a_flow_with_an_encoder_keeps_its_fan_out_in_the_encode_stage(self) -> None:
        from streams.stages.kinds import build_stage

        flow = parse_flow(GOOD)
        assert flow.has_model and flow.input_topic("index") == "f.encoded"
        assert build_stage(flow, "join").query_path.topics == ["f.partials"]  # type: ignore[union-attr]

    def test_topics_config_takes_the_names_of_every_topic(self) -> None:
        flow = parse_flow(self.TEXT + "topics: {config: {dead_letter: {retention.ms: 1}}}\n")
        assert flow.topic_settings.config == {"dead_letter": {"retention.ms": "1"}}
        with pytest.raises(FlowConfigError, match="unknown topic 'nope'; known: ingest, versions, segmented"):
            parse_flow(self.TEXT + "topics: {config: {nope: {}}}\n")
