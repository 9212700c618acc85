"""Documents are validated where the stages decode them: a refused one is dead-lettered by the stage loop."""

import pytest

from processors.document import Document
from processors.exceptions import InvalidDocumentError
from streams.serde import DOCUMENT
from streams.stage import Inbound
from streams.transform import DocumentTransform, decode_document


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
        transform = DocumentTransform(run=lambda docs: docs, output_topic="f.segmented", ingest_topic="f.ingest")
        good = record(Document(id="good", text="Some sentence here."), offset=1)
        assert len(transform.process([good])) == 1
        with pytest.raises(InvalidDocumentError, match="NUL"):
            transform.process([good, record(Document(id="evil\x00id", text="Some sentence here."), offset=2)])
