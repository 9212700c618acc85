"""Grouping and MMR diversity through the stage handlers (fan-out, shards, joiner), without a broker, on
small corpora whose right answers are known; 1 and 3 shards answer alike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.document import Document, TagValue
from processors.rankers.grouping import GROUP_RANK
from streams.wire.records import SearchReply
from tests.streams.stages.fixtures import DIM, Pipeline

QUERY = np.eye(DIM, dtype=np.float32)[0]


def at(score: float, axis: int, turn: float = 0.0) -> np.ndarray:
    """A unit vector whose inner product with :data:`QUERY` is ``score``; the rest of it lies along ``axis``,
    turned by ``turn`` radians towards the next axis (two vectors along one axis are near-duplicates)."""
    vector = np.zeros(DIM, dtype=np.float32)
    rest = math.sqrt(1 - score**2)
    vector[0], vector[axis], vector[axis + 1] = score, rest * math.cos(turn), rest * math.sin(turn)
    return vector


def doc(doc_id: str, vector: np.ndarray, **tags: TagValue) -> Document:
    return Document(id=doc_id, text=f"document {doc_id}", embedding=vector, tags=dict(tags))


PAPERS = [doc("n-1", at(0.95, 1), journal="nature"), doc("n-2", at(0.93, 2), journal="nature"),
          doc("s-1", at(0.90, 3), journal="science"), doc("s-2", at(0.85, 4), journal="science"),
          doc("c-1", at(0.70, 5), journal="cell"), doc("untagged", at(0.99, 6)), doc("year", at(0.98, 1), journal=2024)]

NEAR_DUPLICATES = [
    doc("a", at(0.95, 1)),
    # b's best chunk is a's near-duplicate; its other chunk points elsewhere: MMR must compare the best one
    Document(id="b", text="document b", chunks=[
        Document(id="b/0", parent_id="b", text="b near a", embedding=at(0.93, 1, turn=0.05)),
        Document(id="b/1", parent_id="b", text="b elsewhere", embedding=at(0.0, 5))]),
    doc("c", at(0.80, 3)),
    doc("z", at(0.10, 6)),
]
"""Relevance a 0.95, b 0.93, c 0.80, z 0.10 (min-max: 1, 0.976, 0.824, 0). With λ = 0.5 the second pick is
c (0.412 - 0.5 cos(c, a) = 0.412 - 0.38) over b (0.488 - 0.5 cos(b, a) ≈ 0.488 - 0.499)."""


@pytest.fixture(params=[1, 3], ids=["1 shard", "3 shards"])
def pipeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    flow = Pipeline(tmp_path, request.param)
    flow.index_documents([*PAPERS, *NEAR_DUPLICATES])
    yield flow
    flow.close()


def found(reply: SearchReply) -> list[str]:
    assert not reply.partial and not reply.errors, reply
    assert all(m.embedding is None for m in reply.docs[0].matches)
    return [m.id for m in reply.docs[0].matches]


def test_grouping_by_a_tag_returns_the_best_documents_per_value(pipeline: Pipeline) -> None:
    reply = pipeline.ask("q", embedding=QUERY, top_k=3, group_by="journal", group_size=2)
    assert found(reply) == ["year", "n-1", "n-2", "s-1", "s-2"]  # 2024 has one paper
    assert [(m.tags["journal"], m.scores[GROUP_RANK].value) for m in reply.docs[0].matches] == [
        (2024, 1.0), ("nature", 2.0), ("nature", 2.0), ("science", 3.0), ("science", 3.0)]
    single = pipeline.ask("q", embedding=QUERY, top_k=10, group_by="journal")
    assert found(single) == ["year", "n-1", "s-1", "c-1"]  # one per value; "untagged" is left out
    assert found(pipeline.ask("q", embedding=QUERY, top_k=2)) == ["untagged", "year"]  # without grouping


def test_mmr_drops_a_near_duplicate(pipeline: Pipeline) -> None:
    only = {"query_language": [{"operator": "filter", "traversal_paths": ["m"], "stage": "index",
                                "parameters": {"conditions": {"id__in": ["a", "b", "c", "z"]}}}]}
    assert found(pipeline.ask("q", embedding=QUERY, top_k=2, **only)) == ["a", "b"]
    assert found(pipeline.ask("q", embedding=QUERY, top_k=2, diversity=0.5, **only)) == ["a", "c"]
    assert found(pipeline.ask("q", embedding=QUERY, top_k=3, diversity=1.0, **only)) == ["a", "b", "c"]
