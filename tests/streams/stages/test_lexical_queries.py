"""Lexical and hybrid searches through the stage handlers, without a broker: shards publish their own
statistics, the fan-out's table sums them and attaches the query terms' sums to the request, every
shard scores with them, the joiner merges. The same corpus in 1 and in 3 shards must answer alike,
scores included: per-shard statistics would not (Weaviate #2918, Elasticsearch #24232)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.document import Document
from processors.exceptions import InvalidParameterError
from processors.query.parameters import SearchParameters
from streams.runtime.spec import Inbound
from streams.stages.lexical_table import LexicalTable
from streams.wire import headers as h
from streams.wire.codec import PARTIAL_RESULT, REQUEST
from streams.wire.records import Request, SearchReply
from streams.wire.topics import FlowTopics
from tests.streams.stages.fixtures import ANALYZER, Pipeline

CORPUS = {
    "d00": "Insulin resistance and glucose uptake in skeletal muscle.",
    "d01": "Glucose metabolism in the liver: a review of insulin signalling.",
    "d02": "Sleep deprivation impairs memory consolidation in adolescents.",
    "d03": "Memory, sleep and the hippocampus.",
    "d04": "Zebrafish fin regeneration requires osteoblast dedifferentiation.",
    "d05": "A cohort study of vitamin D and fracture risk in older women.",
    "d06": "Vitamin D supplementation does not prevent fractures.",
    "d07": "Kafka streams: exactly once processing of events.",
    "d08": "The glucose transporter GLUT4 and insulin.",
    "d09": "Osteoblast differentiation in bone repair.",
    "d10": "Sleep, sleep, sleep: what the adolescents said.",
    "d11": "Fracture healing after vitamin supplementation.",
}
QUERIES = ["insulin glucose", "sleep memory", "osteoblast", "vitamin D fracture", "zebrafish", "nothing matches xyzzy"]


@pytest.fixture
def pipelines(tmp_path: Path) -> Iterator[tuple[Pipeline, Pipeline]]:
    one, three = Pipeline(tmp_path / "one", 1), Pipeline(tmp_path / "three", 3)
    for pipeline in (one, three):
        pipeline.index(CORPUS)
    yield one, three
    one.close()
    three.close()


def ranked(reply: SearchReply) -> list[tuple[str, float]]:
    assert not reply.partial and not reply.errors, reply
    return [(match.id, match.scores["score"].value) for match in reply.docs[0].matches]


def test_lexical_search_finds_the_documents_holding_the_terms_best_first(pipelines: tuple[Pipeline, Pipeline]) -> None:
    one, _ = pipelines
    found = ranked(one.ask("zebrafish", retrieval="lexical"))
    assert [doc_id for doc_id, _ in found] == ["d04"]
    insulin = [doc_id for doc_id, _ in ranked(one.ask("insulin glucose", retrieval="lexical", top_k=3))]
    assert set(insulin) == {"d00", "d01", "d08"}
    assert one.ask("nothing matches xyzzy", retrieval="lexical").docs[0].matches == []
    assert all(m.scores["score"].op_name.endswith("(bm25)") for m in one.ask("sleep", retrieval="lexical").docs[0].matches)


@pytest.mark.parametrize("query", QUERIES)
def test_one_and_three_shards_rank_and_score_alike(pipelines: tuple[Pipeline, Pipeline], query: str) -> None:
    one, three = pipelines
    assert ranked(three.ask(query, retrieval="lexical")) == ranked(one.ask(query, retrieval="lexical"))


@pytest.mark.parametrize("fusion", ["rrf", "dbsf", "linear"])
@pytest.mark.parametrize("query", QUERIES[:4])
def test_one_and_three_shards_fuse_alike(pipelines: tuple[Pipeline, Pipeline], query: str, fusion: str) -> None:
    """Each shard sends its arms' lists; the joiner cuts the global lists and fuses: no shard count shows."""
    one, three = pipelines
    fused = ranked(one.ask(query, retrieval="hybrid", fusion=fusion, candidates=4, top_k=6))
    assert fused and all(score >= 0 for _, score in fused)
    assert ranked(three.ask(query, retrieval="hybrid", fusion=fusion, candidates=4, top_k=6)) == fused
    reply = one.ask(query, retrieval="hybrid", fusion=fusion)
    assert {m.scores["score"].op_name for m in reply.docs[0].matches} == {f"fusion.{fusion}"}


def test_scores_follow_upserts_and_deletes_in_every_shard_count(tmp_path: Path, pipelines: tuple[Pipeline, Pipeline]) -> None:
    one, three = pipelines
    changes = {"d04": "Zebrafish zebrafish heart regeneration.", "d12": "Zebrafish larvae."}
    for pipeline in (one, three):
        pipeline.index(changes, offset=100)
    first = ranked(one.ask("zebrafish regeneration", retrieval="lexical"))
    assert [doc_id for doc_id, _ in first][:2] == ["d04", "d12"]
    assert ranked(three.ask("zebrafish regeneration", retrieval="lexical")) == first


def test_a_flow_without_the_lexical_arm_refuses_lexical_retrieval(tmp_path: Path) -> None:
    dense_only = Pipeline(tmp_path, 1, lexical=False)
    try:
        dense_only.index({"d00": "insulin"})
        for retrieval in ("lexical", "hybrid"):
            with pytest.raises(InvalidParameterError, match="needs the lexical arm.*lexical: true"):
                dense_only.ask("insulin", retrieval=retrieval)
        assert [m.id for m in dense_only.ask("insulin").docs[0].matches] == ["d00"]
    finally:
        dense_only.close()


def test_a_lexical_query_needs_text(pipelines: tuple[Pipeline, Pipeline]) -> None:
    one, _ = pipelines
    with pytest.raises(InvalidParameterError, match="has no text"):
        one.ask("   ", retrieval="lexical")


def test_a_lexical_search_without_statistics_is_answered_with_an_error_part(pipelines: tuple[Pipeline, Pipeline]) -> None:
    """A record written straight to the search topic (past the fan-out) carries no statistics: the
    shard answers with the reason rather than score with numbers it does not have."""
    one, _ = pipelines
    request = Request("r2", "search", [Document(id="q0", text="insulin")], f"{one.topics.flow}.reply.t",
                      int(time.time() * 1000) + 60_000, {**SearchParameters().to_dict(), "retrieval": "lexical"}, {})
    record = Inbound(one.topics.search, 0, 0, b"r2", REQUEST.encode(request), {
        h.REQUEST_ID: b"r2", h.REPLY_TO: request.reply_to.encode(), h.DEADLINE_MS: str(request.deadline_ms).encode()})
    with pytest.raises(InvalidParameterError, match="without corpus statistics"):
        one.search.process([record])
    [part] = one.search.on_failure(record, InvalidParameterError("x"))
    assert PARTIAL_RESULT.decode(part.value).error


def test_the_table_sums_the_shards_and_forgets_a_tombstoned_count() -> None:
    table = LexicalTable(ANALYZER.name)
    pipeline_topics = FlowTopics("t", 2)

    def count(partition: int, key: bytes, value: tuple[int, int] | None) -> Inbound:
        from streams.wire.codec import LEXICAL_COUNT
        from streams.wire.records import LexicalCount

        encoded = None if value is None else LEXICAL_COUNT.encode(LexicalCount(*value))
        return Inbound(pipeline_topics.lexical_stats, partition, 0, key, encoded, {})

    table.apply([count(0, b"\0", (3, 30)), count(1, b"\0", (2, 10)), count(0, b"\0insulin", (2, 0)),
                 count(1, b"\0insulin", (1, 0)), count(1, b"no separator", (5, 0)), count(0, b"\0bad", None)])
    stats = table.statistics(["insulin", "absent"])
    assert stats.fields[""].units == 5 and stats.fields[""].tokens == 40
    assert dict(stats.fields[""].df) == {"insulin": 3, "absent": 0}
    table.apply([count(1, b"\0insulin", None), count(0, b"\0insulin", (1, 0))])
    assert dict(table.statistics(["insulin"]).fields[""].df) == {"insulin": 1}


def test_statistics_survive_the_wire(pipelines: tuple[Pipeline, Pipeline]) -> None:
    one, _ = pipelines
    stats = one.table.statistics(ANALYZER.terms("insulin glucose"))
    request = Request("r", "search", [], "x.reply.t", 1, {}, {}, stats)
    assert REQUEST.decode(REQUEST.encode(request)).lexical_statistics == stats
    negative = dataclasses.replace(request, lexical_statistics=dataclasses.replace(
        stats, fields={"": dataclasses.replace(stats.fields[""], df={"insulin": -1})}))
    with pytest.raises(Exception, match="negative"):
        REQUEST.decode(REQUEST.encode(negative))


