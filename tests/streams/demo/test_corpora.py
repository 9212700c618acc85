"""Reading documents from JSON lines: multi-field documents (JEP 3), ids, and the line at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.document import Document
from streams.demo.corpora import read_jsonl
from streams.exceptions import StreamsearchError
from streams.resources import EXAMPLE_FLOWS

BOOKS = EXAMPLE_FLOWS / "jep3-books.jsonl"


def lines(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


class TestReadJsonl:
    def test_the_jep3_example_needs_no_text(self) -> None:
        docs = list(read_jsonl(BOOKS, fields=("title", "summary")))
        assert [d.id for d in docs] == ["10", "11"]
        assert docs[0].text is None and docs[0].tags["title"] == "the story of the art"
        assert list(read_jsonl(BOOKS)) == docs  # by name, the flow's fields unknown: any string field will do

    def test_id_and_text_with_tags(self, tmp_path: Path) -> None:
        [doc] = read_jsonl(lines(tmp_path, {"id": "a", "text": "Some text.", "lang": "en", "year": 1999}))
        assert doc == Document(id="a", text="Some text.", tags={"lang": "en", "year": 1999})  # typed

    def test_integer_ids_are_taken_as_strings(self, tmp_path: Path) -> None:
        assert [d.id for d in read_jsonl(lines(tmp_path, {"id": 10, "title": "x"}, {"id": -3, "text": "y"}))] \
            == ["10", "-3"]

    @pytest.mark.parametrize(("row", "message"), [
        ({"id": 1.5, "title": "x"}, "'id' 1.5 is a number but not an integer; write ids as strings, e.g. \"id\": \"1.5\""),
        ({"id": 10.0, "title": "x"}, "'id' 10.0 is a number but not an integer"),
        ({"id": True, "title": "x"}, "'id' must be a string (or an integer, taken as a string), got true"),
        ({"id": ["a"], "title": "x"}, "got a list"),
        ({"title": "x"}, "need an 'id' (a string, or an integer taken as a string)"),
        ({"id": "a", "text": 5}, "'text' must be a string, got a int"),
        ({"id": "a"}, "need 'text', or fields (other string values) for a flow that maps them"),
        ({"id": "a", "text": "", "year": None}, "need 'text', or fields"),
        ({"id": "a\u0000b", "text": "x"}, "id 'a\\x00b' contains NUL"),
        ({"id": "a", "text": "\ud800"}, "text contains a lone surrogate U+D800"),
        ([1, 2], "need a JSON object with 'id', got a list"),
        ("{not json", "invalid JSON"),
    ])
    def test_a_refused_line_names_file_line_and_why(self, tmp_path: Path, row: object, message: str) -> None:
        path = lines(tmp_path, {"id": "fine", "text": "x"}, row)
        with pytest.raises(StreamsearchError) as refused:
            list(read_jsonl(path))
        assert str(refused.value).startswith(f"{path}:2: ")
        assert message in str(refused.value)

    def test_what_the_flow_maps_decides_whether_text_is_needed(self, tmp_path: Path) -> None:
        path = lines(tmp_path, {"id": "a", "title": "x"})
        with pytest.raises(StreamsearchError, match="need 'text': this flow maps no fields"):
            list(read_jsonl(path, fields=()))
        with pytest.raises(StreamsearchError, match="need 'text' or one of the flow's fields: summary"):
            list(read_jsonl(path, fields=("summary",)))
        assert [d.id for d in read_jsonl(path, fields=("text", "title"))] == ["a"]


class TestNothingInALineIsDroppedSilently:
    def test_an_embedding_is_read_as_a_pre_embedded_document_and_typed_values_kept_as_tags(self, tmp_path: Path) -> None:
        path = tmp_path / "vectors.jsonl"
        path.write_text('{"id": "v1", "embedding": [0.5, -1, 2e3], "year": 2001, "draft": false, "note": null}\n')
        [doc] = read_jsonl(path)
        assert doc.embedding is not None and doc.embedding.dtype.str == "<f4"
        assert doc.embedding.tolist() == [0.5, -1.0, 2000.0] and doc.text is None
        assert doc.tags == {"year": 2001, "draft": False}

    @pytest.mark.parametrize("line, message", [
        ('{"id": "a", "text": "t", "embedding": [NaN, 1.0]}', ":1: embedding holds NaN or infinite values"),
        ('{"id": "a", "text": "t", "embedding": [1e39]}', ":1: embedding holds NaN or infinite values"),
        ('{"id": "a", "text": "t", "embedding": []}', ":1: 'embedding' must be a non-empty list of numbers"),
        ('{"id": "a", "text": "t", "embedding": ["1"]}', ":1: 'embedding' must be a non-empty list of numbers"),
        ('{"id": "a", "text": "t", "authors": ["x", "y"]}', ":1: field 'authors' is a list; fields are strings"),
        ('{"id": "a", "text": "t", "meta": {"k": 1}}', ":1: field 'meta' is a dict"),
        ('{"id": "a", "text": "t", "n": 9223372036854775808}', r":1: tags\['n'\] is an integer beyond"),
        ('{"id": "a", "text": "t", "n": NaN}', r":1: tags\['n'\] must be a finite number"),
    ])
    def test_what_cannot_be_indexed_is_refused_naming_the_line(self, tmp_path: Path, line: str, message: str) -> None:
        path = tmp_path / "docs.jsonl"
        path.write_text(line + "\n")
        with pytest.raises(StreamsearchError, match=message):
            list(read_jsonl(path))


def test_image_lines_read_files_under_the_jsonl_folder_only(tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (5, 5)).save(buffer, format="PNG")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "my cat.png").write_bytes(buffer.getvalue())
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(row) for row in [
        {"id": "a", "uri": "imgs/my cat.png", "year": 2020},
        {"id": "b", "uri": (tmp_path / "imgs" / "my cat.png").as_uri()},  # percent-encoded, as read_image_directory writes
        {"id": "c", "blob": base64.b64encode(buffer.getvalue()).decode()}]) + "\n")
    docs = list(read_jsonl(good))
    assert [(d.id, d.blob, d.mime_type, d.modality) for d in docs] == [
        (i, buffer.getvalue(), "image/png", "image") for i in "abc"]
    assert docs[0].tags == {"year": 2020}
    for row, message in (({"id": "x", "uri": "../outside.png"}, "is outside"),
                         ({"id": "x", "uri": "file:///etc/hostname"}, "is outside"),
                         ({"id": "x", "uri": "imgs"}, "not a regular file"),
                         ({"id": "x", "blob": "not base64!"}, "'blob' is not base64")):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(row) + "\n")
        with pytest.raises(StreamsearchError, match=f"bad.jsonl:1: .*{message}"):
            list(read_jsonl(bad))
