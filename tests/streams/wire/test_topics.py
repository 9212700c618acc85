"""Each topic names the records it carries (``TopicRole.codecs``): producing through it adds the schema
fingerprint header, and every decode of it checks that header."""

from __future__ import annotations

import ast
import dataclasses
import io
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Message

from processors.document import Document
from streams.exceptions import SerdeError
from streams.ops.status import decode_report
from streams.ops.versions import SERVING_KEY, serving_of
from streams.runtime.loop import Inbound
from streams.stages.documents import decode_document
from streams.stages.fanout import decode_live
from streams.wire import headers as h
from streams.wire.codec import (
    DOCUMENT,
    PARTIAL_RESULT,
    REQUEST,
    SEARCH_REPLY,
    SERVING_VERSION,
    STAGE_STATUS,
    VERSION_BUILD,
    Codec,
)
from streams.wire.records import (
    LexicalCount,
    PartialResult,
    Request,
    SearchReply,
    ServingVersion,
    ShardStatus,
    StageStatus,
    VersionBuild,
)
from streams.wire.topics import DEAD_LETTER, FLOW_ROLES, REPLY, VERSIONS, FlowTopics, TopicRole

TOPICS = FlowTopics("fp", 2)
LATER_MS = 2**50
"""A deadline nobody reaches: the query-path decoders skip expired records undecoded."""

VALUES: dict[str, Any] = {
    "streamsearch.Document": Document(id="d", text="t"),
    "streamsearch.Request": Request("r", "search", [Document(id="q", text="q")], "fp.reply.x", LATER_MS, {}, {}),
    "streamsearch.PartialResult": PartialResult("r", 0, [0, 1], "fp.reply.x", LATER_MS, {}, []),
    "streamsearch.SearchReply": SearchReply("r", [], False, [], [], []),
    "streamsearch.StageStatus": StageStatus("index", "h:1", 1, 10, 0.5, 0, [0], [
        ShardStatus(0, documents=3, vectors=9, encoded_offset=8, ingest_offset=2, index_types=["flat"], missing=1,
                    missing_reason="deleted")]),
    "streamsearch.ServingVersion": ServingVersion(2, 1, 1, "reindex"),
    "streamsearch.VersionBuild": VersionBuild(2, "abc", 1),
    "streamsearch.LexicalCount": LexicalCount(12, 340),
}
"""A valid value of each record type."""

CARRIED = [pytest.param(role.name, codec, id=f"{role.name}-{codec.schema['name'].split('.')[1]}")
           for role in (*FLOW_ROLES, REPLY) for codec in role.codecs]
"""Every (topic role, record type) that carries Avro: the flow's topics, reply topics included."""


def value_of(codec: Codec[Any]) -> Any:
    return VALUES[codec.schema["name"]]


def other_fingerprint(codec: Codec[Any]) -> bytes:
    """The fingerprint of another record type of ours."""
    other = REQUEST if codec is not REQUEST else DOCUMENT
    return other.fingerprint.encode()


def test_every_topic_role_names_what_it_carries() -> None:
    assert DEAD_LETTER.codecs == ()  # a record of any topic, kept as it came
    assert {role for role, *_ in (p.values for p in CARRIED)} == {r.name for r in FLOW_ROLES} - {"dead_letter"} | {"reply"}


def test_a_stage_kinds_own_topic_is_created_with_the_flow_and_named_by_version() -> None:
    """A stage kind's ``writes`` role beyond the flow's own: one row, no other place to name it."""
    filtered = TopicRole("filtered", (DOCUMENT,), (("cleanup.policy", "compact"),))
    topics = FlowTopics("fp", 3, 2, (filtered,))
    shapes = {shape.role: shape for shape in topics.shapes()}
    assert topics.name(filtered) == "fp.v2.filtered" == shapes["filtered"].name
    assert shapes["filtered"].partitions == 3 and shapes["filtered"].config == (("cleanup.policy", "compact"),)
    assert [shape.role for shape in topics.shapes()][:len(FLOW_ROLES)] == [role.name for role in FLOW_ROLES]
    assert topics == FlowTopics("fp", 3, 2)  # the same flow, however it was built


@pytest.mark.parametrize("role, codec", CARRIED)
def test_producing_through_a_topic_adds_its_fingerprint_and_decoding_reads_it(role: str,
                                                                              codec: Codec[Any]) -> None:
    value, headers = codec.encode_record(value_of(codec), ((h.REQUEST_ID, b"r"),))
    assert headers == ((h.REQUEST_ID, b"r"), (h.SCHEMA, codec.fingerprint.encode()))
    assert codec.decode_record(value, dict(headers)) == value_of(codec)


@pytest.mark.parametrize("role, codec", CARRIED)
@pytest.mark.parametrize("fingerprint", ["another record type", "unknown", "empty"])
def test_a_record_with_a_wrong_fingerprint_is_refused(role: str, codec: Codec[Any], fingerprint: str) -> None:
    value, _ = codec.encode_record(value_of(codec))  # well-formed bytes of the topic's own type
    wrong = {"another record type": other_fingerprint(codec), "unknown": b"123456789", "empty": b""}[fingerprint]
    with pytest.raises(SerdeError, match=f"record written with schema .*, expected {codec.schema['name']}"):
        codec.decode_record(value, {h.SCHEMA: wrong})


@pytest.mark.parametrize("role, codec", CARRIED)
def test_a_null_value_is_refused(role: str, codec: Codec[Any]) -> None:
    with pytest.raises(SerdeError, match="needs a value"):
        codec.decode_record(None, {h.SCHEMA: codec.fingerprint.encode()})


def test_a_record_without_the_header_is_read_with_the_current_schema() -> None:
    """Producers outside streamsearch may not set ``ss-schema``: the pre-scan and validation still run."""
    value, _ = DOCUMENT.encode_record(Document(id="d", text="t"))
    assert DOCUMENT.decode_record(value, {}) == Document(id="d", text="t")


# -- every place a topic's records are decoded goes through its codec -------------------------------


def _inbound(topic: str, codec: Codec[Any], fingerprint: bytes) -> Inbound:
    value, _ = codec.encode_record(value_of(codec))
    key = b"d" if codec is DOCUMENT else b"r"
    return Inbound(topic, 0, 0, key, value, {h.SCHEMA: fingerprint, h.DEADLINE_MS: str(LATER_MS).encode()})


def _message(topic: str, key: bytes, codec: Codec[Any], fingerprint: bytes) -> Message:
    value, _ = codec.encode_record(value_of(codec))
    return Message(topic=topic, partition=0, offset=0, key=key, value=value, headers=[(h.SCHEMA, fingerprint)])


def _decode_sites() -> list[Any]:
    """(topic, its codec, a decode of one record with the given fingerprint) for each decode site."""
    return [
        pytest.param(DOCUMENT, lambda fp: decode_document(_inbound(TOPICS.ingest, DOCUMENT, fp)),
                     id="ingest/segmented/encoded: stages.documents.decode_document"),
        pytest.param(REQUEST, lambda fp: list(decode_live([_inbound(TOPICS.search, REQUEST, fp)],
                                                                  REQUEST)),
                     id="search: stages.fanout.decode_live"),
        pytest.param(PARTIAL_RESULT, lambda fp: list(decode_live([_inbound(TOPICS.partials, PARTIAL_RESULT, fp)],
                                                                  PARTIAL_RESULT)),
                     id="partials: stages.fanout.decode_live"),
        pytest.param(SERVING_VERSION, lambda fp: serving_of(_message(TOPICS.versions, SERVING_KEY, SERVING_VERSION, fp)),
                     id="versions: ops.versions.serving_of"),
    ]


@pytest.mark.parametrize("codec, decode", _decode_sites())
def test_every_decode_site_checks_the_fingerprint(codec: Codec[Any], decode: Any) -> None:
    assert decode(codec.fingerprint.encode())  # its own fingerprint: read
    with pytest.raises(SerdeError, match="record written with schema"):
        decode(other_fingerprint(codec))


def test_a_status_report_of_another_schema_is_skipped_not_misread() -> None:
    good = _message(TOPICS.status, b"index/h:1", STAGE_STATUS, STAGE_STATUS.fingerprint.encode())
    assert decode_report(good) == VALUES["streamsearch.StageStatus"]
    assert decode_report(_message(TOPICS.status, b"index/h:1", STAGE_STATUS, b"42")) is None


def test_builds_and_replies_have_their_own_codecs() -> None:
    """The versions topic carries two record types, told apart by key; a reply topic carries replies."""
    assert VERSIONS.codecs == (SERVING_VERSION, VERSION_BUILD)
    assert REPLY.codecs == (SEARCH_REPLY,)


def test_status_versions_and_builds_are_dataclasses_and_read_what_earlier_releases_wrote() -> None:
    """They were plain dicts (``Codec[dict]``): the schemas did not change, so the bytes are the same."""
    for codec, value in ((STAGE_STATUS, VALUES["streamsearch.StageStatus"]),
                         (SERVING_VERSION, VALUES["streamsearch.ServingVersion"]),
                         (VERSION_BUILD, VALUES["streamsearch.VersionBuild"])):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, codec.schema, dataclasses.asdict(value))  # as a dict codec wrote it
        assert codec.decode_record(buffer.getvalue(), dict([codec.header()])) == value
        assert codec.encode(value) == buffer.getvalue()


CODEC_NAMES = {"DOCUMENT", "REQUEST", "PARTIAL_RESULT", "SEARCH_REPLY", "STAGE_STATUS", "SERVING_VERSION", "VERSION_BUILD",
               "codec"}
STREAMS = Path(__file__).resolve().parents[3] / "streams"


def test_no_topic_record_is_written_or_read_past_the_fingerprint() -> None:
    """Outside ``wire/codec.py``, topic records go through ``encode_record``/``decode_record`` only: a bare
    ``decode`` would skip the header check, a bare ``encode`` could leave the header off."""
    bypasses = []
    for path in sorted(STREAMS.rglob("*.py")):
        if path == STREAMS / "wire" / "codec.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("encode", "decode", "header") and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in CODEC_NAMES):
                bypasses.append(f"{path.relative_to(STREAMS.parent)}:{node.lineno} {node.func.value.id}.{node.func.attr}")
    assert not bypasses, bypasses
