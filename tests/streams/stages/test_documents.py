"""Documents are validated where the stages decode them: a refused one is dead-lettered by the stage loop."""

import logging

import pytest

from processors.document import Document
from processors.encoders.base import Truncated
from processors.exceptions import BadDocumentError, InvalidDocumentError
from streams.runtime.metrics import TRUNCATED_TEXTS
from streams.wire.codec import DOCUMENT
from streams.runtime.spec import Inbound
from streams.stages.documents import DocumentTransform, TruncationReport, decode_document


def record(doc: Document, offset: int = 0) -> Inbound:
    return Inbound("f.ingest", 0, offset, doc.id.encode(), DOCUMENT.encode(doc), dict([DOCUMENT.header()]))


class TestDecodeDocument:
    def test_a_valid_document_decodes(self) -> None:
        assert decode_document(record(Document(id="ok/1", text="Some sentence here."))).id == "ok/1"

    @pytest.mark.parametrize(("doc", "field"), [
        (Document(id="evil\x00id", text="Some sentence here."), "id"),
        (Document(id="ctl\x1b", text="Some sentence here."), "id"),
        (Document(id="x" * 600, text="Some sentence here."), "id"),
        (Document(id="ok", text="Some\x00sentence"), "text"),
    ])
    def test_a_refused_document_raises_naming_the_field(self, doc: Document, field: str) -> None:
        with pytest.raises(InvalidDocumentError, match=f"^{field} "):
            decode_document(record(doc))

    def test_the_transform_raises_so_the_stage_dead_letters_the_record(self) -> None:
        transform = DocumentTransform(run=lambda docs: docs, output_topic="f.segmented", ingest_topic="f.ingest",
                                      partitions=1)
        good = record(Document(id="good", text="Some sentence here."), offset=1)
        assert len(transform.process([good])) == 1
        with pytest.raises(InvalidDocumentError, match="NUL"):
            transform.process([good, record(Document(id="evil\x00id", text="Some sentence here."), offset=2)])


class TestTruncationReport:
    """Every truncated text is counted; the log names a document at once, then once per interval."""

    def test_counted_in_the_metric_and_logged_rate_limited(self, caplog: pytest.LogCaptureFixture) -> None:
        now = [0.0]
        report = TruncationReport(flow="trunc-test", stage="encode", interval_s=60, clock=lambda: now[0])
        counter = TRUNCATED_TEXTS.labels("trunc-test", "encode")
        before = counter._value.get()
        with caplog.at_level(logging.WARNING, logger="streams.stages.documents"):
            report.record([])
            report.record([Truncated("log", "log", 900, 128)])
            now[0] = 30.0
            report.record([Truncated("a", "a/0", 200, 128), Truncated("b", "b/3", 300, 128)])
            now[0] = 61.0
            report.record([Truncated("c", "c/1", 150, 128)])
        assert counter._value.get() - before == 4
        lines = [r.getMessage() for r in caplog.records if r.name == "streams.stages.documents"]
        assert len(lines) == 2
        assert lines[0].startswith("encode: 1 text(s) longer than max_length=128 tokens were embedded from their "
                                   "first 128 tokens only, e.g. document 'log' (900 tokens)")
        assert lines[1].startswith("encode: 3 text(s)") and "document 'c', node 'c/1' (150 tokens)" in lines[1]


def test_a_document_over_the_chunk_cap_is_refused_by_the_segment_stage_with_the_cap_named() -> None:
    import pytest

    from processors.document import Document
    from processors.exceptions import BadDocumentError
    from streams.flow.parse import parse_flow
    from streams.wire.codec import DOCUMENT
    from streams.runtime.spec import Inbound
    from streams.stages.kinds import build_stage

    flow = parse_flow("""
name: capped
max_chunks_per_document: 50
stages:
  segment: {uses: Sentencizer, with: {min_sent_len: 3}}
  encode: {uses: TransformerEncoder}
  index: {uses: CompoundIndexer, with: {dim: 384}}
  join: {}
""")
    handler = build_stage(flow, "segment").index_path.handler  # type: ignore[union-attr]

    def record(doc: Document, offset: int) -> Inbound:
        return Inbound("capped.ingest", 0, offset, doc.id.encode(), DOCUMENT.encode(doc), dict([DOCUMENT.header()]))

    small = Document(id="small", text=" ".join(f"Sentence number {i} is here." for i in range(50)))
    big = Document(id="big", text=" ".join(f"Sentence number {i} is here." for i in range(51)))
    assert len(handler.process([record(small, 0)])) == 1
    with pytest.raises(BadDocumentError, match="document 'big' has 51 chunks, over max_chunks_per_document=50"):
        handler.process([record(big, 1)])


def test_a_document_without_a_vector_is_refused_naming_why() -> None:
    """Issue 21: JSONL lines with `text` sent to the JEP 3 flow (fields title, summary) gave no chunk,
    no vector, and were counted searchable; the encode stage now refuses them, naming the fields."""
    import numpy as np

    from streams.stages.documents import require_vectors

    only_text = Document(id="t", text="Some sentence here.", tags={"year": "2020"})
    with pytest.raises(BadDocumentError, match=r"^document 't' has nothing to index: it has none of the fields this "
                                               r"flow maps \(title, summary\), only text, year; no search"):
        require_vectors(only_text, fields=("title", "summary"))
    with pytest.raises(BadDocumentError, match="it has no text to embed and no embedding"):
        require_vectors(Document(id="e", text=""))
    chunk = Document(id="c/0", text="x", embedding=np.ones(4, np.float32))
    assert require_vectors(Document(id="c", chunks=[chunk])).id == "c"
