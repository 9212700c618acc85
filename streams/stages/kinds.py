"""THE table of stage kinds: one row per kind, read by flow parsing, stage building, status,
reindex, the CLI and the deploy checks; no other module names a stage kind.

A new kind is its row (``KINDS``, in data-flow order), its builder here, its handler module and its
test. Builders import their handler modules when called: reading a flow (the client, ``status``)
must not load FAISS, RocksDB or the stages' own imports of the flow spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from processors.document import Document
from processors.exceptions import BadDocumentError, InvalidParameterError
from processors.query.parameters import SearchParameters
from streams.flow.executors import ENCODERS, INDEXERS, SEGMENTERS, Executor
from streams.kafka.settings import KafkaSettings
from streams.runtime.spec import FailurePolicy, PathSpec, StageSpec
from streams.runtime.reply_topics import ReplyTopics
from streams.wire.topics import ENCODED, PARTIALS, QUERY, SEARCH, SEGMENTED, TopicRole

if TYPE_CHECKING:
    from processors.index.lexical import Analyzer
    from streams.flow.spec import FlowSpec, StageConfig
    from streams.stages.lexical_table import LexicalTable
    from streams.stages.shard.ingest import ShardIngest
    from streams.stages.shard.states import ShardStates

__all__ = ["FAILURE_POLICY", "StageKind", "StageBuild", "KINDS", "SEGMENT", "ENCODE", "INDEX", "JOIN", "STATEFUL_KINDS",
           "ANSWERING_KINDS", "QUERY_PATH_KINDS", "STAGE_TOPIC_ROLES", "build_stage", "shard_ingest"]

INDEX_PATH_FETCH_WAIT_MS = 100
"""Index-path consumers wait longer per fetch: ingest is throughput, not latency."""

SEARCH_GATHER_MS = 5.0
"""How long an index stage holds a search request for its copies to its other partitions (``PathSpec.gather_ms``):
the copies are produced together, and the second usually arrives within a fetch (a millisecond here)."""

SHARD_SLICE_RECORDS = 32
"""An index stage applies its batches of up to 256 documents in slices of this many, serving the searches
that arrived between slices (``PathSpec.slice_records``): a batch of upserts takes ~45 ms on 2 busy cores,
a slice ~6 ms, so a search during a bulk ingest waits for a slice rather than a batch."""

SHARD_COMMIT_INTERVAL_S = 1.0
"""The least time between two commits of an index stage's index path (``PathSpec.commit_interval_s``): a shard stores
the offsets it applied in its own write batches, so the group's are for lag only. A commit per batch (up to 256
records) cost the stage's main thread a wake-up of librdkafka's (3.8 % of its samples during a bulk insert, py-spy)
and the broker an OffsetCommit each: ``insert_cpu.py`` (200,000 vectors, 1 shard, two pairs in turns, 2026-12-07)
fresh round, all processes 67.7 / 70.2 us of CPU a vector against 78.7 / 82.7 (broker 16-17 against 23-25, index
stage 38.0-38.8 against 39.8-41.8), all searchable 8.2-8.7 s after the start against 9.3-9.8."""

SHARD_PREFETCH_KBYTES = 16 << 10
"""``queued.max.messages.kbytes`` of the index path's consumer (librdkafka's default: 64 MiB). A shard that
falls behind a bulk ingest (the client inserting faster than it applies) had librdkafka prefetch up to 64 MiB
of records into its process: ``benchmarks/peers.py`` (100,000 384-d vectors) peaked the index stage at
400-411 MiB on 1 shard and 452-466 on 2; with 16 MiB, 349 and 369, inserts and "all searchable after" within
the runs' spread. 16 MiB is still some 10,000 pre-embedded documents, 40 of the stage's batches."""

SHARD_FETCH_QUEUE_BACKOFF_MS = 10
"""``fetch.queue.backoff.ms`` with it (librdkafka's default: 1,000): a full queue postpones the next fetch by
this long, and a shard drains 16 MiB in well under a second (replay's stall, ``streams/ops/replay.py``)."""

SHARD_CONSUMER_CONFIG: dict[str, object] = {
    "enable.partition.eof": True,  # "restored" = the end of the partition was reached
    "auto.offset.reset": "error",  # a stored offset out of range rebuilds the shard, never skips silently
    "queued.max.messages.kbytes": SHARD_PREFETCH_KBYTES,
    "fetch.queue.backoff.ms": SHARD_FETCH_QUEUE_BACKOFF_MS,
}

QUERY_GROUP_SUFFIX = ".query"
"""The consumer group of the fan-out's query path: ``<group>.query``."""
SEARCH_GROUP_SUFFIX = ".search"
"""The consumer group of a shard's search path: ``<group>.search`` (it follows the index path's assignment)."""


@dataclass(frozen=True, slots=True)
class StageBuild:
    """What every builder gets: the flow, its stage, and what ``build_stage`` derived for all kinds."""

    flow: FlowSpec
    stage: StageConfig
    common: dict[str, Any]
    """The ``StageSpec`` fields every kind shares (names, dead letters, status, limits)."""
    group: str
    reply_topics: ReplyTopics
    defaults: SearchParameters
    exactly_once: bool
    settings: KafkaSettings | None = None
    """The cluster; None builds a stage for a test without a broker (nothing is read at build)."""

    def lexical_fanout(self) -> tuple[Analyzer, LexicalTable] | None:
        """What a fan-out needs for the lexical arm, in a flow whose index keeps it: the analyzer and the
        statistics table, following ``<flow>.lexical-stats`` when there is a cluster. None without the arm."""
        if not self.flow.lexical:
            return None
        from processors.index.lexical import Analyzer
        from streams.stages.lexical_table import LexicalTable

        analyzer = Analyzer()
        topics = self.flow.topics
        table = LexicalTable(analyzer.name, flow=topics.prefix)
        if self.settings is not None:
            table.start(self.settings, topics.lexical_stats, topics.partitions,
                        client_id=f"{self.group}.lexical-table")
        return analyzer, table


@dataclass(frozen=True, slots=True)
class StageKind:
    """One kind of stage: what a flow YAML may say of it and how it runs."""

    name: str
    """The key under ``stages:`` in a flow YAML, the stage's consumer group suffix and its log name."""
    build: Callable[[StageBuild], StageSpec]
    executors: Mapping[str, Executor]
    """What ``uses`` may name (extras included: ``streams.stages.extras``); empty: no executor."""
    default_uses: str | None = None
    required: bool = True
    keys: frozenset[str] = frozenset()
    """The YAML keys this kind takes beyond those of every kind (``uses``, ``with``, ``replicas``, ``metrics_port``)."""
    without_executor: str = ""
    """Why the kind takes no ``uses``/``with`` (its kinds with no executors say so in the error)."""
    index_path: bool = False
    """Reads the previous stage's output (or ingest): part of what decides a version's index content."""
    writes: TopicRole | None = None
    """The topic its index path writes, for the next stage to read: one of ``FLOW_ROLES`` or its own
    (a new ``TopicRole`` here: the flow creates it with the rest)."""
    query_reads: TopicRole | None = None
    """The topic role its query path reads; None: not on the query path."""
    stateful: bool = False
    """Holds the shards (state, restore, replay; reports them in status)."""
    needs_model: bool = False
    """Runs the model or holds its vectors: starting it checks the index's dim against the model's."""
    answers_queries: bool = False
    """Every reply needs it, even a partial one (the fan-out and the fan-in)."""
    liveness_suffix: str = ""
    """A live process shows as a member of ``<group><suffix>`` (the shard's search path has no group)."""
    holds_vectors: bool = False
    """Holds its shards' vectors in memory, scanned at every search and grown by doubling: its process fixes its
    mmap threshold (``fix_mmap_threshold`` in ``streams/runtime/heap.py``) and collapses the vectors into huge pages
    whenever its writes pause (``start_collapsing`` in ``processors/index/huge_pages.py``)."""


FAILURE_POLICY = FailurePolicy(rejected=(InvalidParameterError,))
"""Every stage's: a request with an invalid parameter is answered with the error, not dead-lettered."""


def build_stage(flow: FlowSpec, name: str, settings: KafkaSettings | None = None) -> StageSpec:
    """The StageSpec of one stage of the flow; processors are built, not yet warmed up.

    :param settings: the cluster, asked which reply topics exist; None checks their names only.
    :raises FlowConfigError: if the flow has no such stage.
    """
    stage = flow.stage(name)
    topics = flow.topics
    group = topics.group(name)
    reply_topics = ReplyTopics(topics, settings)
    common = dict(flow=topics.prefix, name=name, dead_letter_topic=topics.dead_letter, reply_topics=reply_topics,
                  max_payload_bytes=flow.max_payload_bytes, metrics_port=stage.metrics_port,
                  status_topic=topics.status, inflight_dir=flow.state_dir / topics.prefix / "inflight",
                  failure_policy=FAILURE_POLICY)
    defaults = SearchParameters.parse({"top_k": flow.search.top_k, "chunk_oversample": flow.search.chunk_oversample,
                                       "retrieval": flow.search.retrieval, "fusion": flow.search.fusion})
    # Stateless stages commit outputs and offsets in one transaction; the shard needs none:
    # its offsets are in its own RocksDB write batch.
    exactly_once = flow.processing_guarantee == "exactly_once"
    return KINDS[name].build(StageBuild(flow, stage, common, group, reply_topics, defaults, exactly_once, settings))


def _build_segment(b: StageBuild) -> StageSpec:
    from streams.stages.documents import DocumentTransform

    flow, topics = b.flow, b.flow.topics
    segmenter = b.stage.build()
    segmenter.warm_up()

    def segment(docs: Sequence[Document]) -> Sequence[Document]:
        segmented = segmenter.run(docs=docs).docs
        for doc in segmented:
            if len(doc.chunks) > flow.max_chunks_per_document:
                raise BadDocumentError(f"document {doc.id!r} has {len(doc.chunks)} chunks, over "
                                       f"max_chunks_per_document={flow.max_chunks_per_document}")
        return segmented

    transform = DocumentTransform(run=segment, output_topic=flow.output_topic(b.stage.name), ingest_topic=topics.ingest,
                                  partitions=topics.partitions)
    return StageSpec(**b.common, exactly_once=b.exactly_once,
                     index_path=PathSpec(flow.input_topic(b.stage.name), b.group, transform,
                                         fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS))


def _build_encode(b: StageBuild) -> StageSpec:
    from streams.stages.documents import DocumentTransform, TruncationReport, require_vectors
    from streams.stages.fanout import QueryFanout

    flow, stage, topics = b.flow, b.stage, b.flow.topics
    encoder = stage.build()
    encoder.warm_up()

    truncations = TruncationReport(flow=topics.prefix, stage=stage.name)

    def encode(docs: Sequence[Document]) -> Sequence[Document]:
        result = encoder.run(docs=docs, filter_by=stage.filter_by)
        truncations.record(result.truncated)
        return [require_vectors(doc, fields=flow.fields) for doc in result.docs]

    transform = DocumentTransform(run=encode, output_topic=flow.output_topic(stage.name), ingest_topic=topics.ingest,
                                  partitions=topics.partitions)
    fanout = QueryFanout(encoder=encoder, topics=topics, defaults=b.defaults, fields=flow.fields,
                         filterable=flow.filterable,
                         timeout_s=flow.search.timeout_s, reply_topics=b.reply_topics, lexical=b.lexical_fanout())
    return StageSpec(
        **b.common,
        exactly_once=b.exactly_once,
        index_path=PathSpec(flow.input_topic(stage.name), b.group, transform, batch_size=32,
                            fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS),
        query_path=PathSpec(topics.query, f"{b.group}{QUERY_GROUP_SUFFIX}", fanout, batch_size=16,
                            fetch_wait_ms=flow.search.fetch_wait_ms),
    )


def shard_ingest(flow: FlowSpec, states: ShardStates) -> ShardIngest:
    """The index stage's index-path handler, as the live stage and replay build it: it applies the topic
    before it (``encoded``; without a model, what the documents arrive on) and, without a model,
    checks the vectors the documents carry."""
    from streams.stages.shard.ingest import ShardIngest

    stage = flow.stage(INDEX.name)
    return ShardIngest(states=states, topics=flow.topics, filter_by=stage.filter_by,
                       source=flow.input_topic(INDEX.name), given_dim=None if flow.has_model else stage.config.dim)


def _build_index(b: StageBuild) -> StageSpec:
    from streams.stages.shard.search import ShardSearch
    from streams.stages.shard.states import ShardStates

    flow, stage, topics = b.flow, b.stage, b.flow.topics
    states = ShardStates(root=flow.state_dir, flow=topics.prefix, config=stage.config, private_when_locked=True,
                         source=flow.source)
    ranker = stage.build_ranker()
    ingest = shard_ingest(flow, states)
    return StageSpec(
        **b.common,
        index_path=PathSpec(flow.input_topic(stage.name), b.group, ingest, batch_size=256, fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS,
                            consumer_config=SHARD_CONSUMER_CONFIG, slice_records=SHARD_SLICE_RECORDS,
                            commit_interval_s=SHARD_COMMIT_INTERVAL_S),
        query_path=PathSpec(topics.search, f"{b.group}{SEARCH_GROUP_SUFFIX}", ShardSearch(states=states, ranker=ranker, topics=topics,
                                                                            operations=stage.query_language),
                            follow_index_path=True, fetch_wait_ms=flow.search.fetch_wait_ms,
                            gather_ms=SEARCH_GATHER_MS),
    )


def _build_join(b: StageBuild) -> StageSpec:
    """The fan-in; in a flow without a model (no encode stage) also the fan-out, on the same consumer."""
    from streams.stages.join import Joiner

    flow, topics = b.flow, b.flow.topics
    joiner = Joiner(b.stage.query_language, flow=topics.prefix, version=flow.version, topics=topics,
                    fields=flow.fields, max_reply_bytes=flow.max_payload_bytes)
    if flow.has_model:
        return StageSpec(**b.common, query_path=PathSpec(topics.partials, b.group, joiner, batch_size=256,
                                                         fetch_wait_ms=flow.search.fetch_wait_ms))
    from streams.stages.dispatch import ByTopic
    from streams.stages.fanout import QueryFanout

    fanout = QueryFanout(encoder=None, dim=flow.stage(INDEX.name).config.dim, topics=topics, defaults=b.defaults,
                         fields=flow.fields, filterable=flow.filterable, timeout_s=flow.search.timeout_s,
                         reply_topics=b.reply_topics, stage=b.stage.name, lexical=b.lexical_fanout())
    handler = ByTopic({topics.query: fanout, topics.partials: joiner})
    return StageSpec(**b.common, query_path=PathSpec(topics.partials, b.group, handler, batch_size=256,
                                                     fetch_wait_ms=flow.search.fetch_wait_ms,
                                                     also_reads=(topics.query,)))


SEGMENT = StageKind("segment", _build_segment, SEGMENTERS, default_uses="Sentencizer", required=False,
                    index_path=True, writes=SEGMENTED)
ENCODE = StageKind("encode", _build_encode, ENCODERS, default_uses="TransformerEncoder", keys=frozenset({"filter_by"}),
                   required=False,
                   index_path=True, writes=ENCODED, query_reads=QUERY, needs_model=True, answers_queries=True,
                   liveness_suffix=QUERY_GROUP_SUFFIX)
INDEX = StageKind("index", _build_index, INDEXERS, default_uses="CompoundIndexer",
                  keys=frozenset({"shards", "ranker", "filter_by", "query_language"}),
                  index_path=True, query_reads=SEARCH, stateful=True, needs_model=True, holds_vectors=True)
JOIN = StageKind("join", _build_join, {}, keys=frozenset({"query_language"}),
                 without_executor="it merges shard results by score (query_language applies)",
                 query_reads=PARTIALS, answers_queries=True)

KINDS: Mapping[str, StageKind] = {kind.name: kind for kind in (SEGMENT, ENCODE, INDEX, JOIN)}
"""Every stage kind by name, in data-flow order: a flow's stages come in this order."""

STATEFUL_KINDS = tuple(name for name, kind in KINDS.items() if kind.stateful)
ANSWERING_KINDS = tuple(name for name, kind in KINDS.items() if kind.answers_queries)
"""The stages any reply needs, even a partial one: the query path's fan-out and the fan-in."""
STAGE_TOPIC_ROLES = tuple(kind.writes for kind in KINDS.values() if kind.writes is not None)
"""The topics stage kinds write; with ``FLOW_ROLES``, every topic of a flow (``FlowSpec.topics``)."""
QUERY_PATH_KINDS = tuple(name for name, kind in KINDS.items() if kind.query_reads is not None)
"""The stages a search passes through: a version serves only while each of them runs."""
