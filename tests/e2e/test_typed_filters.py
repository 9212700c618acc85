"""Filters that returned nothing, or too little, without a word: numbers read from JSONL stay
numbers, a comparison across kinds is an error reply, and a reply short of top_k because a
filter ran after the top-k cut says so. End to end: `streamsearch index` and the client, on Kafka."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.exceptions import SearchError

from streams.local.runtime import LocalRuntime
from tests.e2e.fixtures import FlowFactory, root_flow_yaml

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
RECIPES = [
    {"id": "soup", "text": "A quick tomato soup with basil.", "minutes": 10, "vegan": True},
    {"id": "salad", "text": "A fresh tomato salad with olive oil.", "minutes": 5, "vegan": True},
    {"id": "stew", "text": "A slow tomato and beef stew.", "minutes": 180, "vegan": False},
    {"id": "pasta", "text": "Tomato pasta with garlic, ready in a quarter hour.", "minutes": 15.5, "vegan": True},
]
SALADS = [{"id": f"salad-{i}", "text": f"A fresh tomato salad with olive oil, variant {i}."} for i in range(10)]
"""Without a minutes tag: a filter on it skips them (a missing value, not a kind)."""
QUERY = "tomato dish"


def _filter(conditions: dict, stage: str = "join") -> dict:
    return {"query_language": [{"operator": "filter", "stage": stage, "traversal_paths": ["m"],
                                "parameters": {"conditions": conditions}}]}


@pytest.fixture(scope="module")
def flow(start_flow: FlowFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalRuntime:
    """The recipes, indexed by `streamsearch index` as a user would: JSONL with number tags."""
    runtime = start_flow(root_flow_yaml())
    path = tmp_path_factory.mktemp("recipes") / "recipes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in RECIPES + SALADS))
    assert runtime.settings is not None
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": runtime.settings.bootstrap_servers}
    indexed = subprocess.run([sys.executable, "-m", "streams.cli", "index", str(path), "--flow", runtime.flow.name,
                              "--wait", "--timeout", "120"], capture_output=True, text=True, cwd=ROOT, env=env,
                             timeout=180)
    assert indexed.returncode == 0, indexed.stderr
    return runtime


@pytest.mark.parametrize("stage", ["index", "join"])
def test_a_number_from_jsonl_compares_as_a_number(flow: LocalRuntime, stage: str) -> None:
    with flow.client() as client:
        reply = client.search(QUERY, top_k=20, timeout_s=60, parameters=_filter({"tags.minutes__lte": 15.5}, stage))
    assert not reply.errors and not reply.warnings  # no shard cut its 7 or so documents at top_k=20
    assert sorted(m.id for m in reply.docs[0].matches) == ["pasta", "salad", "soup"]
    assert {m.id: m.tags["minutes"] for m in reply.docs[0].matches}["soup"] == 10  # typed in the reply too


def test_a_comparison_across_kinds_is_an_error_reply_naming_it(flow: LocalRuntime) -> None:
    with flow.client() as client, pytest.raises(SearchError) as refused:
        client.search(QUERY, top_k=4, timeout_s=60, parameters=_filter({"tags.minutes__lte": "15"}))
    errors = refused.value.errors
    assert errors and "condition 'tags.minutes__lte'" in errors[0] and "a number" in errors[0]
    assert "never matches" in errors[0] and "ConditionTypeError" in errors[0]


def test_a_join_stage_filter_short_of_top_k_says_so(flow: LocalRuntime) -> None:
    """Each of the 2 shards sends its top 2, salads all; the join-stage filter for the stew keeps
    none of them: the reply says so, and is neither an error nor partial. At the index stage the
    same filter runs before each shard's cut and finds the stew."""
    slow = _filter({"tags.minutes__gte": 100})
    with flow.client() as client:
        reply = client.search("a fresh tomato salad", top_k=2, timeout_s=60, parameters=slow)
        at_index = client.search("a fresh tomato salad", top_k=2, timeout_s=60,
                                 parameters=_filter({"tags.minutes__gte": 100}, "index"))
    assert not reply.errors and not reply.partial and reply.docs[0].matches == []
    assert reply.warnings == ["join: a join-stage filter kept 0 of the 4 documents the shards sent for q0, fewer than "
                              "top_k=2; it ran after each shard's top-k cut, so more may match: give the filter "
                              "\"stage\": \"index\" to filter before the cut"]
    assert [m.id for m in at_index.docs[0].matches] == ["stew"] and not at_index.warnings
