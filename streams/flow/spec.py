"""A checked flow: its stages in data-flow order, shards, topics and runtime settings.

``streams.flow.parse`` builds one from a flow YAML; everything that runs a flow reads this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from processors.query.operators import Operation
from processors.query.parameters import DEFAULT_FUSION, DENSE
from streams.exceptions import FlowConfigError
from streams.flow.executors import RANKERS
from streams.stages.kinds import ENCODE, INDEX, KINDS, SEGMENT, STAGE_TOPIC_ROLES
from streams.wire.topics import FlowTopics, TopicSettings

if TYPE_CHECKING:  # the contracts only: reading a flow loads no model, FAISS or RocksDB
    from processors.encoders.base import Encoder
    from processors.index.config import CompoundIndexerConfig
    from processors.segmenters.base import Segmenter

__all__ = ["StageConfig", "SearchDefaults", "FlowSpec", "with_state_dir", "DEFAULT_MAX_PAYLOAD_BYTES",
           "DEFAULT_MAX_CHUNKS_PER_DOCUMENT", "PROCESSING_GUARANTEES"]

DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_CHUNKS_PER_DOCUMENT = 10_000
PROCESSING_GUARANTEES = ("at_least_once", "exactly_once")


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
        return KINDS[self.name].executors[self.uses].build(self.config) if self.uses else None

    def build_ranker(self) -> Any:
        return RANKERS[self.ranker_uses].build(self.ranker_config) if self.ranker_uses else None


@dataclass(frozen=True, slots=True)
class SearchDefaults:
    """Per-flow defaults a request may override."""

    top_k: int = 10
    timeout_s: float = 10.0
    chunk_oversample: int = 5
    retrieval: str = DENSE
    """``dense``, ``lexical`` or ``hybrid`` (``processors.query.parameters.RETRIEVALS``); the last two need
    the index stage's lexical arm."""
    fusion: str = DEFAULT_FUSION
    """How a hybrid search fuses its arms (``FUSIONS``)."""
    fetch_wait_ms: int | None = None
    """Query-path consumers' fetch.wait.max.ms; None: by the broker (``latency_fetch_wait_ms``: 5 ms on
    the embedded broker, whose every hop waits this long, 100 on Apache Kafka, which answers a fetch as
    soon as a record arrives, so the wait only sets how often an idle consumer asks)."""


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
        return FlowTopics(self.name, self.shards, self.version, STAGE_TOPIC_ROLES)

    @property
    def has_model(self) -> bool:
        """Whether an encode stage embeds texts. Without one, documents and queries carry their vectors,
        the index stage reads what documents arrive on and checks them, and the join stage fans queries
        out: no process imports torch or loads a model."""
        return any(stage.name == ENCODE.name for stage in self.stages)

    @property
    def embeds(self) -> tuple[str, ...] | None:
        """What the flow's encoder embeds in a query (``text``, ``image``, or both: ``Executor.embeds``);
        None without one (queries then carry their vectors)."""
        if not self.has_model:
            return None
        from streams.flow.executors import ENCODERS

        return ENCODERS[self.stage(ENCODE.name).uses].embeds

    @property
    def lexical(self) -> bool:
        """Whether the index keeps the lexical arm (``index: with: {lexical: true}``): searches with
        ``retrieval: lexical`` or ``hybrid`` are answered, not refused."""
        return bool(self.stage(INDEX.name).config.lexical)

    @property
    def filterable(self) -> Mapping[str, str]:
        """The tag keys a request's ``filter`` may test, with their types (``index: with: {filterable: ...}``)."""
        return self.stage(INDEX.name).config.filterable

    @property
    def label(self) -> str:
        """The flow as people name it: ``hello``, or ``hello v2`` for a later version."""
        return self.name if self.version == 1 else f"{self.name} v{self.version}"

    @property
    def fields(self) -> tuple[str, ...]:
        """The fields searched separately: the index's ``filter_by``, else the FieldMapper's;
        empty for a flow without fields (one part per shard)."""
        index = self.stage(INDEX.name)
        if index.filter_by:
            return index.filter_by
        segment = next((s for s in self.stages if s.name == SEGMENT.name), None)
        segmenter: Segmenter | None = segment.build() if segment else None  # cheap: loads nothing
        return segmenter.fields if segmenter else ()

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
        encode = next((s for s in self.stages if s.name == ENCODE.name), None)
        if encode is None:
            return
        index: CompoundIndexerConfig = self.stage(INDEX.name).config
        index_dim = index.dim
        encoder: Encoder = encode.build()
        produced = encoder.output_dim
        if produced != index_dim:
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
        return self.output_topic(names[position - 1]) if position > 0 else self.topics.ingest

    def output_topic(self, stage_name: str) -> str:
        """The index-path topic a stage writes (its kind's ``writes`` role)."""
        role = KINDS[stage_name].writes
        if role is None:
            raise KeyError(stage_name)
        return self.topics.name(role)


def with_state_dir(flow: FlowSpec, state_dir: Path) -> FlowSpec:
    """The same flow keeping its shard state elsewhere (tests, benchmarks)."""
    return dataclasses.replace(flow, state_dir=state_dir)
