import pytest

from processors.document import Document
from processors.exceptions import ConfigError
from processors.segmenters.fields import FieldMapper, FieldMapperConfig


class TestFieldMapper:
    def test_each_named_field_becomes_a_chunk_with_its_field_name(self) -> None:
        doc = Document(id="10", text="body", tags={"title": "the story of the art", "summary": "a book"})
        mapped = FieldMapper(FieldMapperConfig(fields=("title", "summary", "text"))).run(docs=[doc]).docs[0]
        assert [(c.id, c.field_name, c.text) for c in mapped.chunks] == [
            ("10/title", "title", "the story of the art"), ("10/summary", "summary", "a book"), ("10/text", "text", "body")]
        assert all(c.parent_id == "10" and c.granularity == 1 for c in mapped.chunks)
        assert doc.chunks == []

    def test_missing_fields_give_no_chunk(self) -> None:
        mapped = FieldMapper(FieldMapperConfig(fields=("title", "summary"))).run(docs=[Document(id="x", tags={"title": "t"})])
        assert [c.field_name for c in mapped.docs[0].chunks] == ["title"]

    @pytest.mark.parametrize("fields", [(), ("a", "a")])
    def test_bad_config(self, fields: tuple[str, ...]) -> None:
        with pytest.raises(ConfigError):
            FieldMapperConfig(fields=fields)
