"""``retrieval: lexical`` as a user asks for it, on a real broker: the CLI's ``--retrieval`` and the HTTP
bridge's ``retrieval`` find a document by an exact rare term that its vector says nothing of, in a flow
whose index keeps the lexical arm; a flow without the arm refuses in one line.

The flows have no model (documents carry random vectors): no process loads torch, and only the lexical
arm can find a document by its words."""

from __future__ import annotations

import numpy as np
import pytest

from processors.document import Document
from streams.client.http import create_app
from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, call, cli, stage_logs

pytestmark = pytest.mark.kafka

DIM = 8
FLOW = """name: "{name}"
stages:
  index:
    with: {dim: 8, metric: inner_product, lexical: LEXICAL}
    shards: 2
  join: {}
search:
  timeout_s: 30
"""
RARE = "XK-4471"
DOCS = {
    "pump": f"Replace the seal of pump model {RARE} every spring.",
    "valve": "Valves of the older series leak when the seal ages.",
    "filter": "Change the filter of the pump when the pressure drops.",
    "boiler": "The boiler heats the water for the whole building.",
}


@pytest.fixture(scope="module")
def lexical_flow(start_flow: FlowFactory) -> LocalRuntime:
    """A flow with the lexical arm, ``DOCS`` indexed and applied by every shard.

    (Not ``streamsearch index --wait``: its probe is a text search, which a flow without a model refuses.)"""
    runtime = start_flow(FLOW.replace("LEXICAL", "true"))
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((len(DOCS), DIM)).astype(np.float32)
    with runtime.client() as client:
        receipt = client.index([Document(id=doc_id, text=text, embedding=vector)
                                for (doc_id, text), vector in zip(DOCS.items(), vectors)])
        reply = client.search(vectors=vectors[:1], top_k=1, after=receipt, timeout_s=60)  # read-your-writes
    assert not reply.partial and not reply.stale_shards, stage_logs(runtime)
    return runtime


def test_search_retrieval_lexical_finds_the_document_by_its_rare_term(lexical_flow: LocalRuntime) -> None:
    result = cli("search", RARE.lower(), "--flow", lexical_flow.flow.name, "--retrieval", "lexical", "--top-k", "2",
                 bootstrap=lexical_flow.settings.bootstrap_servers)
    assert result.returncode == 0, (result.stderr, stage_logs(lexical_flow))
    ranked = [line.split()[2] for line in result.stdout.splitlines() if line.strip()[:2] in ("1.", "2.")]
    assert ranked == ["pump"], result.stdout  # the only document with the term: one match, not top_k padding
    assert "bm25" in result.stdout  # the scoring that answered, named


def test_http_retrieval_lexical_ranks_by_the_words(lexical_flow: LocalRuntime) -> None:
    with lexical_flow.client() as client:
        app = create_app(client, token="", flow=lexical_flow.flow)
        assert call(app, "GET", "/status").json()["lexical"] is True
        response = call(app, "POST", "/search", json={"texts": "seal of the pump", "retrieval": "lexical",
                                                      "top_k": 3, "deadline_s": 30})
    assert response.status_code == 200, response.text
    matches = response.json()["results"][0]["matches"]
    assert [m["id"] for m in matches][0] == "pump"  # both words; valve and filter have one each
    assert {m["id"] for m in matches} == {"pump", "valve", "filter"}
    assert all("bm25" in m["score"]["op_name"] for m in matches)


def test_a_flow_without_the_lexical_arm_refuses_in_one_line(start_flow: FlowFactory) -> None:
    """(HTTP's 400 for it: tests/e2e/test_http.py.)"""
    dense_only = start_flow(FLOW.replace("LEXICAL", "false"))
    result = cli("search", RARE, "--flow", dense_only.flow.name, "--retrieval", "lexical",
                 bootstrap=dense_only.settings.bootstrap_servers)
    assert result.returncode == 1, result.stdout
    assert "needs the lexical arm" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
