"""Builds each stage's StageSpec from a FlowSpec: which topics, groups and handlers it has."""

from __future__ import annotations

from collections.abc import Sequence

from processors.document import Document
from processors.exceptions import BadDocumentError
from processors.query.parameters import SearchParameters
from streams.flow.parse import FlowSpec
from streams.stages.join import Joiner
from streams.kafka.settings import KafkaSettings
from streams.stages.fanout import QueryFanout
from streams.runtime.reply_topics import ReplyTopics
from streams.stages.shard.ingest import ShardIngest
from streams.stages.shard.search import ShardSearch
from streams.runtime.loop import PathSpec, StageSpec
from streams.stages.shard.states import ShardStates
from streams.stages.documents import DocumentTransform, TruncationReport, require_vectors

__all__ = ["build_stage"]

INDEX_PATH_FETCH_WAIT_MS = 100
"""Index-path consumers wait longer per fetch: ingest is throughput, not latency."""

SHARD_CONSUMER_CONFIG: dict[str, object] = {
    "enable.partition.eof": True,  # "restored" = the end of the partition was reached
    "auto.offset.reset": "error",  # a stored offset out of range rebuilds the shard, never skips silently
}


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
                  status_topic=topics.status, inflight_dir=flow.state_dir / topics.prefix / "inflight")
    defaults = SearchParameters.parse(
        {"top_k": flow.search.top_k, "chunk_oversample": flow.search.chunk_oversample})
    # Stateless stages commit outputs and offsets in one transaction; the shard needs none:
    # its offsets are in its own RocksDB write batch.
    exactly_once = flow.processing_guarantee == "exactly_once"
    if name == "segment":
        segmenter = stage.build()
        segmenter.warm_up()

        def segment(docs: Sequence[Document]) -> Sequence[Document]:
            segmented = segmenter.run(docs=docs).docs
            for doc in segmented:
                if len(doc.chunks) > flow.max_chunks_per_document:
                    raise BadDocumentError(f"document {doc.id!r} has {len(doc.chunks)} chunks, over "
                                           f"max_chunks_per_document={flow.max_chunks_per_document}")
            return segmented

        transform = DocumentTransform(run=segment, output_topic=topics.segmented, ingest_topic=topics.ingest,
                                      partitions=topics.partitions)
        return StageSpec(**common, exactly_once=exactly_once,
                         index_path=PathSpec(flow.input_topic(name), group, transform, fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS))
    if name == "encode":
        encoder = stage.build()
        encoder.warm_up()

        truncations = TruncationReport(flow=topics.prefix, stage=name)

        def encode(docs: Sequence[Document]) -> Sequence[Document]:
            result = encoder.run(docs=docs, filter_by=stage.filter_by)
            truncations.record(result.truncated)
            return [require_vectors(doc, fields=flow.fields) for doc in result.docs]

        transform = DocumentTransform(run=encode, output_topic=topics.encoded, ingest_topic=topics.ingest,
                                      partitions=topics.partitions)
        fanout = QueryFanout(encoder=encoder, topics=topics, defaults=defaults, fields=flow.fields,
                             timeout_s=flow.search.timeout_s, reply_topics=reply_topics)
        return StageSpec(
            **common,
            exactly_once=exactly_once,
            index_path=PathSpec(flow.input_topic(name), group, transform, batch_size=32,
                                fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS),
            query_path=PathSpec(topics.query, f"{group}.query", fanout, batch_size=16,
                                fetch_wait_ms=flow.search.fetch_wait_ms),
        )
    if name == "index":
        states = ShardStates(root=flow.state_dir, flow=topics.prefix, config=stage.config, private_when_locked=True,
                             source=flow.source)
        ranker = stage.build_ranker()
        return StageSpec(
            **common,
            index_path=PathSpec(topics.encoded, group, ShardIngest(states=states, topics=topics, filter_by=stage.filter_by),
                                batch_size=256, fetch_wait_ms=INDEX_PATH_FETCH_WAIT_MS,
                                consumer_config=SHARD_CONSUMER_CONFIG),
            query_path=PathSpec(topics.search, f"{group}.search", ShardSearch(states=states, ranker=ranker, topics=topics,
                                                                      operations=stage.query_language),
                                follow_index_path=True, fetch_wait_ms=flow.search.fetch_wait_ms),
        )
    if name == "join":
        joiner = Joiner(stage.query_language, flow=topics.prefix, version=flow.version, topics=topics,
                        fields=flow.fields, max_reply_bytes=flow.max_payload_bytes)
        return StageSpec(**common, query_path=PathSpec(topics.partials, group, joiner, batch_size=256,
                                                       fetch_wait_ms=flow.search.fetch_wait_ms))
    raise AssertionError(f"unhandled stage {name}")  # flow.stage() already rejected unknown names
