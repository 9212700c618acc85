"""The HTTP bridge's answers to hostile input that never reaches Kafka: a 4xx, never a 500.
(The bridge runs in-process over a client of an address nobody listens on: none of these
requests may get as far as the broker. ``test_http.py`` covers the rest, in front of a flow.)"""

from __future__ import annotations

import asyncio
import json
import re
import logging
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fastapi import FastAPI

from streams.client import Client
from streams.client.http import PAGE, create_app, warn_if_unprotected
from streams.kafka.settings import KafkaSettings
from tests.fixtures import flow_spec


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client("nobody", settings=KafkaSettings("127.0.0.1:1", {"socket.timeout.ms": 1000})) as c:
        yield c


@pytest.fixture(scope="module")
def app(client: Client) -> FastAPI:
    return create_app(client, token="")


def call(app: FastAPI, method: str, path: str, body: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge", timeout=60) as http:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            return await http.request(method, path, content=body.encode() if body else None, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize(("body", "field"), [
    ('{"texts": "x", "top_k": NaN}', "top_k"),
    ('{"texts": "x", "top_k": Infinity}', "top_k"),
    ('{"texts": "x", "top_k": -Infinity}', "top_k"),
    ('{"texts": "x", "top_k": 1e400}', "top_k"),
    ('{"texts": "x", "deadline_s": NaN}', "deadline_s"),
    ('{"texts": "x", "deadline_s": Infinity}', "deadline_s"),
    ('{"texts": "x", "deadline_s": 1e400}', "deadline_s"),
    ('{"texts": "x", "after": {"0": 1e400}}', "after"),
    ('{"texts": "x", "after": {"0": NaN}}', "after"),
    ('{"texts": "x", "after": {"0": 1e30}}', "after"),  # beyond what an Avro long carries
])
def test_non_finite_and_huge_numbers_are_422_naming_the_field(app: FastAPI, body: str, field: str) -> None:
    response = call(app, "POST", "/search", body)
    assert response.status_code == 422, response.text
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


@pytest.mark.parametrize(("body", "message"), [
    ('{"texts": "x", "index_type": "\\ud800"}', "index_type contains a lone surrogate U+D800"),
    ('{"texts": "\\udfff", "top_k": 3}', "texts contains a lone surrogate U+DFFF"),
])
def test_lone_surrogates_in_search_fields_are_422(app: FastAPI, body: str, message: str) -> None:
    response = call(app, "POST", "/search", body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_a_query_record_over_the_payload_limit_is_413_not_503(app: FastAPI) -> None:
    # Under the 8 MiB body limit, but its query language travels as ASCII-escaped JSON: 3× larger.
    values = ["é" * 1000] * 3000
    body = json.dumps({"texts": "x", "query_language": [
        {"operator": "filter", "parameters": {"conditions": {"text__in": values}}}]}, ensure_ascii=False)
    assert len(body.encode()) < 8 * 1024 * 1024
    response = call(app, "POST", "/search", body)
    assert response.status_code == 413, response.text
    assert "over max_payload_bytes" in response.json()["detail"]


def test_an_id_with_a_slash_reaches_the_delete_handler(app: FastAPI) -> None:
    # The handler sees the whole id: here it refuses it, so nothing is sent to the (absent) broker.
    response = call(app, "DELETE", "/docs/guides/evil%00intro")
    assert response.status_code == 422, response.text
    assert "id 'guides/evil\\x00intro' contains NUL" in response.json()["detail"]


def test_the_bridge_warns_when_it_listens_beyond_loopback_without_a_token(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    open_app, closed_app = create_app(client, token=""), create_app(client, token="s3cret")
    with caplog.at_level(logging.WARNING, logger="streams.client.http"):
        assert warn_if_unprotected(open_app, "0.0.0.0")
        assert warn_if_unprotected(open_app, "bridge.example.org")
        assert not warn_if_unprotected(closed_app, "0.0.0.0")
        for loopback in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
            assert not warn_if_unprotected(open_app, loopback)
    assert [r.getMessage() for r in caplog.records][0] == (
        "the HTTP bridge listens on 0.0.0.0 without a token: anyone who reaches it can index, delete and search; "
        "set STREAMSEARCH_TOKEN")


def test_the_page_takes_the_token_from_a_prompt_into_memory_never_from_the_url() -> None:
    page = PAGE.read_text()
    assert "location.search" not in page and "URLSearchParams" not in page
    assert "Storage" not in page  # neither sessionStorage nor localStorage
    assert 'headers["Authorization"] = "Bearer " + token' in page


def test_a_401_keeps_its_challenge_header(client: Client) -> None:
    response = call(create_app(client, token="s3cret"), "POST", "/search", '{"texts": "x"}')
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_validation_errors_are_json_even_when_they_echo_nan(app: FastAPI) -> None:
    response = call(app, "POST", "/index", '{"id": "x", "text": NaN}')
    assert response.status_code == 422
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert detail[0]["loc"][-1] == "text" and detail[0]["input"] is None


def test_without_an_inspector_status_says_what_the_client_knows(client: Client) -> None:
    """A bridge an application builds itself, with no operator reads passed in: ``/status`` is the
    flow's name, serving version and fields, and a note saying what is left out; never a 500."""
    response = call(create_app(client, token="", flow_fields=("title",)), "GET", "/status")
    assert response.status_code == 200
    body = response.json()
    assert (body["flow"], body["version"], body["fields"]) == ("nobody", 1, ["title"])
    assert "without a FlowInspector" in body["note"]


def test_every_reply_field_reaches_the_json_answer() -> None:
    """The bridge passes a reply's fields on by the dataclass: a new reply field needs no edit in http/payloads.py."""
    import dataclasses

    from processors.document import Document
    from streams.client.http import REPLY_INTERNAL, _reply_json
    from streams.wire.records import SearchReply

    reply = SearchReply(request_id="r1", docs=[Document(id="q", text="x")], partial=False, missing_shards=[],
                        stale_shards=[], errors=[], warnings=["fewer"], version=2)
    answer = _reply_json(["x"], reply, 1.24)
    passed = {f.name for f in dataclasses.fields(SearchReply)} - REPLY_INTERNAL
    assert passed <= answer.keys() and "request_id" not in answer
    assert answer["warnings"] == ["fewer"] and answer["version"] == 2 and answer["latency_ms"] == 1.2


@pytest.mark.parametrize(("field", "value"), [
    ("retrieval", "bm25"), ("fusion", "borda"), ("rrf_k", 0), ("candidates", 10**6), ("dense_weight", 1.5),
    ("dense_weight", "NaN"),
])
def test_a_bad_retrieval_option_is_422_naming_it_before_the_broker(app: FastAPI, field: str, value: Any) -> None:
    body = json.dumps({"texts": "x", field: value}).replace('"NaN"', "NaN")
    response = call(app, "POST", "/search", body)
    assert response.status_code == 422, response.text
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


def test_the_allowed_retrievals_and_fusions_are_in_the_schema(app: FastAPI) -> None:
    from processors.query.parameters import FUSIONS, RETRIEVALS

    schema = call(app, "GET", "/openapi.json").json()["components"]["schemas"]["SearchIn"]["properties"]
    assert [choice["enum"] for choice in schema["retrieval"]["anyOf"] if "enum" in choice] == [list(RETRIEVALS)]
    assert [choice["enum"] for choice in schema["fusion"]["anyOf"] if "enum" in choice] == [list(FUSIONS)]


def test_status_says_whether_the_flow_keeps_the_lexical_arm(client: Client, tmp_path: Path) -> None:
    """The page shows its retrieval switch by ``lexical``: from the flow's YAML, null without one."""
    for flow, expected in ((flow_spec(tmp_path, "nobody", lexical=True), True),
                           (flow_spec(tmp_path, "nobody", lexical=False), False), (None, None)):
        status = call(create_app(client, token="", flow=flow), "GET", "/status").json()
        assert (status["lexical"], status["retrievals"]) == (expected, ["dense", "lexical", "hybrid"])


@pytest.mark.parametrize(("body", "status", "message"), [
    ('{"texts": "x", "filter": ' + '{"$not": ' * 100_000 + '{"a": 1}' + '}' * 100_000 + '}', 400, "error parsing the body"),
    ('{"texts": "x", "filter": {"a": {"$gt": NaN}}}', 422, "a finite number"),
    ('{"texts": "x", "filter": {"a": {"$in": [1, {"$gt": 2}]}}}', 422, "a finite number or a boolean, got a dict"),
    ('{"texts": "x", "filter": {"a": {"$near": 1}}}', 422, "unknown operator '\\$near'"),
    ('{"texts": "x", "filter": {"$or": []}}', 422, "non-empty list of filters"),
    ('{"texts": "x", "filter": [1]}', 422, "filter"),
])
def test_a_hostile_or_malformed_filter_is_refused_with_4xx_before_sending(app: FastAPI, body: str, status: int,
                                                                          message: str) -> None:
    response = call(app, "POST", "/search", body)
    assert response.status_code == status, response.text[:500]
    assert re.search(message, response.text), response.text[:500]


def test_images_take_wrapped_base64_and_data_uris_and_refuse_other_text(app: FastAPI) -> None:
    import base64

    wrapped = "\n".join(base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 100).decode()[i:i + 76] for i in range(0, 144, 76))
    for image in (wrapped, "data:image/png;base64," + wrapped):
        response = call(app, "POST", "/search", json.dumps({"images": [image]}))
        assert response.status_code == 503, response.text  # decoded and sent: no broker behind this bridge
    refused = call(app, "POST", "/search", json.dumps({"images": ["not base64!"]}))
    assert refused.status_code == 422 and "images: not base64" in refused.text
    both = call(app, "POST", "/search", json.dumps({"texts": "x", "images": [wrapped]}))
    assert both.status_code == 422 and "give texts or images" in both.text
