"""The Flow YAML: which executors each stage uses, how many replicas, how many shards.

A flow is fully described and checked before anything runs (the Topology idea): a bad key,
an unknown executor or a wrong type is reported with its line in the YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from processors.exceptions import QueryLanguageError
from processors.query.operators import Operation, parse_operations
from streams.exceptions import FlowConfigError
from streams.flow.executors import EXECUTORS, build_config
from streams.wire.topics import TOPIC_ROLES, FlowTopics, TopicSettings

__all__ = ["STAGE_ORDER", "StageConfig", "SearchDefaults", "FlowSpec", "load_flow", "parse_flow", "with_state_dir"]

STAGE_ORDER = ("segment", "encode", "index", "join")
REQUIRED_STAGES = ("encode", "index", "join")
DEFAULT_USES = {"segment": "Sentencizer", "encode": "TransformerEncoder", "index": "CompoundIndexer"}
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CHUNKS_PER_DOCUMENT = 10_000
_FLOW_KEYS = {"name", "version", "stages", "state_dir", "kafka", "max_payload_bytes", "search", "processing_guarantee",
              "topics", "max_chunks_per_document"}
_TOPICS_KEYS = {"replication_factor", "min_insync_replicas", "config"}
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")
_STAGE_KEYS = {"uses", "with", "replicas", "shards", "ranker", "metrics_port", "filter_by", "query_language"}


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One stage: its executor (with checked config), replicas and, for the index, its ranker."""

    name: str
    uses: str | None
    config: Any
    replicas: int = 1
    ranker_uses: str | None = None
    ranker_config: Any = None
    filter_by: tuple[str, ...] = ()
    """Fields this stage handles (encode: embeds, index: indexes); empty means all."""
    metrics_port: int | None = None
    """Prometheus port of the stage's processes (replica i of a local run serves port + i)."""
    query_language: tuple[Operation, ...] = ()
    """Default query-language operations (index: before its top-k cut; join: on the merged reply)."""

    def build(self) -> Any:
        """A fresh processor instance (cheap: models load in ``warm_up``)."""
        return EXECUTORS[self.name][self.uses].build(self.config) if self.uses else None

    def build_ranker(self) -> Any:
        return EXECUTORS["ranker"][self.ranker_uses].build(self.ranker_config) if self.ranker_uses else None


@dataclass(frozen=True, slots=True)
class SearchDefaults:
    """Per-flow defaults a request may override."""

    top_k: int = 10
    timeout_s: float = 10.0
    chunk_oversample: int = 5
    fetch_wait_ms: int = 5
    """Query-path consumers' fetch.wait.max.ms: per-hop latency on the embedded broker, which
    answers a fetch only when this wait is over. Each such consumer costs that broker about
    12% of a core at 5 ms; raise it for bulk loads. Apache Kafka answers fetches at once."""


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """A checked flow: name, stages in data-flow order, shard count and runtime settings."""

    name: str
    stages: tuple[StageConfig, ...]
    shards: int
    state_dir: Path
    kafka: Mapping[str, Any] = field(default_factory=dict)
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    processing_guarantee: str = "at_least_once"
    search: SearchDefaults = SearchDefaults()
    source: Path | None = None
    max_chunks_per_document: int = DEFAULT_MAX_CHUNKS_PER_DOCUMENT
    """A document segmented into more chunks is dead-lettered (its encoding would hold a stage for minutes)."""
    topic_settings: TopicSettings = TopicSettings()
    """The ``topics:`` section: replication and per-topic configs of the topics ``run`` creates."""
    version: int = 1
    """The index version this YAML builds: a reindex with new executors gets a higher one, its own
    topics and state, and the shared ingest topic (``FlowTopics``)."""

    @property
    def topics(self) -> FlowTopics:
        return FlowTopics(self.name, self.shards, self.version)

    @property
    def label(self) -> str:
        """The flow as people name it: ``hello``, or ``hello v2`` for a later version."""
        return self.name if self.version == 1 else f"{self.name} v{self.version}"

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields searched separately: the index's ``filter_by``, else the FieldMapper's;
        empty for a flow without fields (one part per shard)."""
        index = self.stage("index")
        if index.filter_by:
            return index.filter_by
        segment = next((s for s in self.stages if s.name == "segment"), None)
        return tuple(getattr(segment.config, "fields", ())) if segment else ()

    def idle_replicas(self, replicas: Mapping[str, int] | None = None) -> list[str]:
        """Why some processes would do nothing: every stage reads topics of ``shards`` partitions,
        and a consumer group gives each partition to one member.

        :param replicas: process counts per stage to check (default: the YAML's).
        :returns: one warning per stage that has more replicas than partitions.
        """
        counts = {s.name: s.replicas for s in self.stages} | dict(replicas or {})
        return [f"{count} replicas of stage {name!r} but {self.shards} partitions: {count - self.shards} will stay "
                f"idle (raise the index's shards to use them)" for name, count in counts.items() if count > self.shards]

    def check_dimensions(self) -> None:
        """Refuse an index whose ``dim`` differs from what the encoder produces, before anything runs:
        otherwise every document would be dead-lettered at the shard, one by one.

        Reads the model's ``config.json`` only (no weights load).

        :raises FlowConfigError: naming both dimensions and the value to set.
        :raises ModelNotFoundError: if the encoder's model is not where the flow says.
        """
        encode = next((s for s in self.stages if s.name == "encode"), None)
        index_dim = getattr(self.stage("index").config, "dim", None)
        if encode is None or index_dim is None:
            return
        produced = getattr(encode.build(), "output_dim", None)
        if produced is not None and produced != index_dim:
            raise FlowConfigError(
                f"{self.source or self.name}: stages.index.with.dim is {index_dim}, but the encoder "
                f"({encode.uses}) produces {produced}-d vectors; set dim: {produced} (or use a model of "
                f"{index_dim} dimensions)")

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise FlowConfigError(
            f"flow {self.name!r} has no stage {name!r}; it has {', '.join(s.name for s in self.stages)}"
        )

    def input_topic(self, stage_name: str) -> str:
        """The index-path topic a stage reads: the output of the stage before it, or ingest."""
        names = [s.name for s in self.stages]
        position = names.index(stage_name)
        previous = names[position - 1] if position > 0 else None
        return {None: self.topics.ingest, "segment": self.topics.segmented, "encode": self.topics.encoded}[previous]

    def output_topic(self, stage_name: str) -> str:
        return {"segment": self.topics.segmented, "encode": self.topics.encoded}[stage_name]


def load_flow(path: str | Path) -> FlowSpec:
    """Read and check a flow YAML file.

    :raises FlowConfigError: with the file, line and reason.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise FlowConfigError(f"cannot read flow {path}: {exc.strerror}") from exc
    return parse_flow(text, source=path)


def parse_flow(text: str, *, source: Path | None = None) -> FlowSpec:
    """Check a flow YAML text; see ``load_flow``."""
    where = str(source) if source else "<flow>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise FlowConfigError(f"{where}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    lines = _key_lines(root)

    def fail(path: tuple[str, ...], message: str) -> FlowConfigError:
        line = lines.get(path) or next((lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in lines), None)
        return FlowConfigError(f"{where}{f':{line}' if line else ''}: {message}")

    if not isinstance(data, dict):
        raise fail((), "a flow is a mapping with 'name' and 'stages'")
    for key in data:
        if key not in _FLOW_KEYS:
            raise fail((key,), f"unknown key {key!r}; known: {', '.join(sorted(_FLOW_KEYS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise fail(("name",), "'name' must be letters, digits, '-' or '_' (it prefixes every topic)")
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise fail(("version",), "'version' must be a positive integer (the index version: "
                                 "`streamsearch reindex` builds a higher one beside the serving one)")
    stages_data = data.get("stages")
    if not isinstance(stages_data, dict) or not stages_data:
        raise fail(("stages",), "'stages' must map stage names to their settings")
    names = list(stages_data)
    for stage_name in names:
        if stage_name not in STAGE_ORDER:
            raise fail(("stages", stage_name), f"unknown stage {stage_name!r}; stages are {', '.join(STAGE_ORDER)}")
    missing = [s for s in REQUIRED_STAGES if s not in names]
    if missing:
        raise fail(("stages",), f"flow needs the stages {', '.join(missing)}")
    if names != [s for s in STAGE_ORDER if s in names]:
        raise fail(("stages",), f"stages must come in data-flow order: {', '.join(STAGE_ORDER)}")

    shards = 1
    stages = []
    for stage_name in names:
        settings = stages_data[stage_name] or {}
        path = ("stages", stage_name)
        if not isinstance(settings, dict):
            raise fail(path, f"stage {stage_name!r} must be a mapping")
        for key in settings:
            if key not in _STAGE_KEYS:
                raise fail(path + (key,), f"stage {stage_name}: unknown key {key!r}; known: {', '.join(sorted(_STAGE_KEYS))}")
        replicas = settings.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 1:
            raise fail(path + ("replicas",), f"stage {stage_name}: replicas must be a positive integer")
        if "shards" in settings:
            if stage_name != "index":
                raise fail(path + ("shards",), "only the index stage has shards")
            shards = settings["shards"]
            if not isinstance(shards, int) or shards < 1:
                raise fail(path + ("shards",), "index: shards must be a positive integer")
        stages.append(_stage(stage_name, settings, replicas, path, fail))
    state_dir = Path(data.get("state_dir") or Path(".streamsearch") / "state")
    search = data.get("search") or {}
    if not isinstance(search, dict):
        raise fail(("search",), "'search' must map setting names to values")
    known = [f.name for f in dataclasses.fields(SearchDefaults)]
    for key in search:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise fail(("search", key), f"search: unknown key {key!r}"
                                        f"{f' (did you mean {close[0]!r}?)' if close else ''}; known: {', '.join(known)}")
    defaults = SearchDefaults(**search)
    kafka = data.get("kafka") or {}
    if not isinstance(kafka, dict):
        raise fail(("kafka",), "'kafka' must map librdkafka settings to values")
    max_payload = data.get("max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
    if not isinstance(max_payload, int) or max_payload < 1024:
        raise fail(("max_payload_bytes",), "max_payload_bytes must be an integer >= 1024")
    guarantee = data.get("processing_guarantee", "at_least_once")
    if guarantee not in PROCESSING_GUARANTEES:
        raise fail(("processing_guarantee",), f"processing_guarantee must be one of {', '.join(PROCESSING_GUARANTEES)}, "
                                              f"got {guarantee!r}")
    topic_settings = _topic_settings(data.get("topics"), fail)
    max_chunks = data.get("max_chunks_per_document", DEFAULT_MAX_CHUNKS_PER_DOCUMENT)
    if not isinstance(max_chunks, int) or isinstance(max_chunks, bool) or max_chunks < 1:
        raise fail(("max_chunks_per_document",), "max_chunks_per_document must be a positive integer")
    return FlowSpec(
        name=name,
        max_chunks_per_document=max_chunks,
        topic_settings=topic_settings,
        stages=tuple(stages),
        shards=shards,
        state_dir=state_dir,
        kafka=kafka,
        max_payload_bytes=max_payload,
        processing_guarantee=guarantee,
        search=defaults,
        source=source,
        version=version,
    )


def _topic_settings(section: Any, fail: Any) -> TopicSettings:
    if section is None:
        return TopicSettings()
    if not isinstance(section, dict):
        raise fail(("topics",), "'topics' must be a mapping: replication_factor, min_insync_replicas, config")
    for key in section:
        if key not in _TOPICS_KEYS:
            raise fail(("topics", key), f"topics: unknown key {key!r}; known: {', '.join(sorted(_TOPICS_KEYS))}")
    counts = {}
    for key in ("replication_factor", "min_insync_replicas"):
        value = section.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise fail(("topics", key), f"topics: {key} must be a positive integer")
        counts[key] = value
    if counts["replication_factor"] and counts["min_insync_replicas"] and \
            counts["min_insync_replicas"] > counts["replication_factor"]:
        raise fail(("topics", "min_insync_replicas"),
                   "topics: min_insync_replicas above replication_factor would refuse every write")
    config = section.get("config") or {}
    if not isinstance(config, dict):
        raise fail(("topics", "config"), f"topics.config maps a topic ({', '.join(TOPIC_ROLES)}) to Kafka topic configs")
    checked: dict[str, dict[str, str]] = {}
    for role, entries in config.items():
        if role not in TOPIC_ROLES:
            raise fail(("topics", "config", str(role)), f"topics.config: unknown topic {role!r}; known: {', '.join(TOPIC_ROLES)}")
        if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
            raise fail(("topics", "config", role), f"topics.config.{role} must map Kafka topic configs to values")
        checked[role] = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in entries.items()}
    return TopicSettings(counts["replication_factor"], counts["min_insync_replicas"], checked)


def _stage(name: str, settings: dict[str, Any], replicas: int, path: tuple[str, ...], fail: Any) -> StageConfig:
    uses = settings.get("uses", DEFAULT_USES.get(name))
    params = settings.get("with") or {}
    if not isinstance(params, dict):
        raise fail(path + ("with",), f"stage {name}: 'with' must be a mapping")
    config = None
    if name == "join":
        if uses is not None or params:
            raise fail(path, "the join stage takes no executor: it merges shard results by score (query_language applies)")
    else:
        known = EXECUTORS[name]
        if uses not in known:
            raise fail(path + ("uses",), f"stage {name}: unknown executor {uses!r}; available: {', '.join(known)}")
        try:
            config = build_config(known[uses].config_type, params, f"stage {name} ({uses})")
        except FlowConfigError as exc:
            raise fail(path + ("with",), str(exc)) from exc
    ranker_uses, ranker_config = None, None
    if "ranker" in settings:
        if name != "index":
            raise fail(path + ("ranker",), "only the index stage has a ranker")
    if name == "index":
        ranker = settings.get("ranker") or {}
        ranker_uses = ranker.get("uses", "Chunk2DocRanker")
        if ranker_uses not in EXECUTORS["ranker"]:
            raise fail(
                path + ("ranker",), f"unknown ranker {ranker_uses!r}; available: {', '.join(EXECUTORS['ranker'])}"
            )
        ranker_config = build_config(
            EXECUTORS["ranker"][ranker_uses].config_type, ranker.get("with") or {}, f"stage index ranker ({ranker_uses})"
        )
    filter_by = settings.get("filter_by") or []
    if not isinstance(filter_by, list) or not all(isinstance(f, str) and f for f in filter_by):
        raise fail(path + ("filter_by",), f"stage {name}: filter_by must be a list of field names")
    if filter_by and name not in ("encode", "index"):
        raise fail(path + ("filter_by",), "only the encode and index stages take filter_by")
    operations: tuple[Operation, ...] = ()
    if "query_language" in settings:
        if name not in ("index", "join"):
            raise fail(path + ("query_language",), "only the index and join stages take query_language")
        try:
            operations = parse_operations(settings["query_language"])
        except QueryLanguageError as exc:
            raise fail(path + ("query_language",), f"stage {name}: query_language: {exc}") from exc
    metrics_port = settings.get("metrics_port")
    if metrics_port is not None and (not isinstance(metrics_port, int) or not 1 <= metrics_port <= 65535):
        raise fail(path + ("metrics_port",), f"stage {name}: metrics_port must be a port number")
    return StageConfig(
        name=name, uses=uses, config=config, replicas=replicas, ranker_uses=ranker_uses, ranker_config=ranker_config,
        filter_by=tuple(filter_by), query_language=operations, metrics_port=metrics_port,
    )


def _key_lines(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path of a composed YAML mapping to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = path + (str(key_node.value),)
            lines[key_path] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key_path))
    return lines


def with_state_dir(flow: FlowSpec, state_dir: Path) -> FlowSpec:
    """The same flow keeping its shard state elsewhere (tests, benchmarks)."""
    return dataclasses.replace(flow, state_dir=state_dir)
