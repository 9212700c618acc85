"""An index-stage filter is not limited to the first top_k × chunk_oversample vectors of a shard,
end to end through Kafka with the real model."""

import itertools

import pytest

from processors.document import Document
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, root_flow_yaml

pytestmark = pytest.mark.kafka

FLOW = root_flow_yaml()
QUERY = "rivers and streams in a green valley"
WATERS = ["river", "stream", "brook", "creek", "mountain stream", "clear river"]
PLACES = ["a green valley", "a quiet valley", "the wooded valley", "a grassy valley", "the valley floor",
          "a lush green dale", "the meadows of a valley", "a narrow green valley", "a wide valley", "a sunny valley"]
# MiniLM puts every English sentence (cosine 0.52 to 0.83) far above the German ones (0.03, 0.04),
# so each shard's first window (3 × 5 = 15 of its ~30 vectors) holds English documents only.
ENGLISH = [Document(id=f"en-{i:02}", text=f"A {water} winds through {place}.", tags={"lang": "en"})
           for i, (water, place) in enumerate(itertools.product(WATERS, PLACES))]
GERMAN = [Document(id="de-1", text="Ein Fluss fließt durch ein grünes Tal im Schwarzwald.", tags={"lang": "de"}),
          Document(id="de-2", text="Der Bach plätschert zwischen den Wiesen des Tals.", tags={"lang": "de"})]
ONLY_GERMAN = [{"operator": "filter", "stage": "index", "traversal_paths": ["m"],
                "parameters": {"conditions": {"tags.lang": "de"}}}]


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory) -> LocalRuntime:
    return start_flow(FLOW)


def test_a_tag_filter_at_the_index_stage_finds_documents_beyond_the_first_window(flow: LocalRuntime) -> None:
    assert len(ENGLISH) == 60
    with flow.client() as client:
        receipt = client.index(ENGLISH + GERMAN)
        unfiltered = client.search(QUERY, top_k=62, after=receipt, timeout_s=60)
        reply = client.search(QUERY, top_k=3, after=receipt, timeout_s=60,
                              parameters={"query_language": ONLY_GERMAN})
    ranked = [m.id for m in unfiltered.docs[0].matches]
    assert len(ranked) == 62 and {ranked[-1], ranked[-2]} == {"de-1", "de-2"}  # the German ones come last
    assert not reply.partial and not reply.errors
    # Fewer than top_k: every shard widened until it had read all its vectors.
    assert sorted(m.id for m in reply.docs[0].matches) == ["de-1", "de-2"]
    assert all(m.tags["lang"] == "de" for m in reply.docs[0].matches)
