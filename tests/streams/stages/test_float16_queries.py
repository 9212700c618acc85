"""A flow with ``flat_scan: float16`` through the stage handlers, without a broker: its shards answer what
float32 shards answer, near-duplicates included, and a search the bound could not prove from the first
candidates shows in ``streamsearch_flat_scan_fallbacks``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from processors.document import Document
from tests.streams.stages.fixtures import DIM, Pipeline, vector


def answers(pipeline: Pipeline, embedding: np.ndarray) -> list[tuple[str, float]]:
    reply = pipeline.ask("", embedding=embedding, top_k=5)
    return [(match.id, match.scores["score"].value) for match in reply.docs[0].matches]


def test_float16_shards_answer_as_float32_shards_and_count_what_the_bound_could_not_prove(tmp_path: Path) -> None:
    twin = vector("d7")
    docs = [Document(id=f"d{i:03d}", text="t", embedding=vector(f"d{i}") if i % 2 else twin) for i in range(300)]
    pipelines = {scan: Pipeline(tmp_path / scan, 2, lexical=False, flat_scan=scan, flow=f"half{scan}") for scan in ("float32", "float16")}
    for pipeline in pipelines.values():
        pipeline.index_documents(docs)
    try:
        for query in (twin, vector("q5"), np.full(DIM, 0.0, np.float32) + twin * 1e-3):
            assert answers(pipelines["float16"], query) == answers(pipelines["float32"], query)
        twins = answers(pipelines["float16"], twin)
        assert [doc_id for doc_id, _ in twins] == ["d000", "d002", "d004", "d006", "d007"]  # 151 tie (d7 is the twin): by id
        fallbacks = [REGISTRY.get_sample_value("streamsearch_flat_scan_fallbacks",
                                               {"flow": pipelines["float16"].topics.flow, "partition": str(p)})
                     for p in range(2)]
        assert all(count is not None and count >= 1 for count in fallbacks)  # ~75 twins a shard, past 2k + 16
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
