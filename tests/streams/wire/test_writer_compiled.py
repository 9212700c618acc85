"""The compiled writer (``streams/wire/_avro.c``, ``Program.write``) against its reference, fastavro's
``schemaless_writer``: for every schema the codecs write, values in fastavro's form, ordinary and odd (a
subclass, a tuple for a list, an int or a bool where a double goes, ints past a field's range, a missing
field, NaN and infinities, surrogates, a union's ``(name, value)`` notation, right and wrong). Whatever the
compiled writer writes must be fastavro's bytes for the same value; where it leaves a value to fastavro
(None), ``Codec.encode`` must still give fastavro's bytes, or its error."""

from __future__ import annotations

import io
import math
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.document import Direction, Document, Score
from streams.wire.codec import DOCUMENT, STORED_DOCUMENT
from streams.wire.documents import doc_to_avro
from streams.wire.program import COMPILED, Program
from streams.wire.scan_nodes import compile_scan, program_of
from streams.wire.schemas import PARSED_SCHEMAS


class Text(str):
    """A str subclass: fastavro takes it as a string; the compiled writer leaves it to fastavro."""


class Number(float):
    """A float subclass (numpy's float64 is one)."""


def _program(schema: Any) -> Program:
    program = program_of(compile_scan(schema))
    assert program is not None, "the install did not build streams/wire/_avro.c"
    return program


PROGRAMS = {name: _program(schema) for name, schema in PARSED_SCHEMAS.items()}


def _fastavro(schema: Any, value: Any) -> bytes | Exception:
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, schema, value)
    except Exception as exc:  # noqa: BLE001 - the reference's verdict, compared below
        return exc
    return buffer.getvalue()


def _scalar(kind: str, odd: bool) -> st.SearchStrategy[Any]:
    """Values of an Avro primitive, and with ``odd`` the odd ones next to them."""
    strange = st.sampled_from([None, True, False, 0, -1, 2**31, -2**31 - 1, 2**63, -2**63 - 1, 1.5, math.nan,
                           math.inf, -math.inf, 3.5e38, 1e300, "", "x", Text("t"), b"", b"b", bytearray(b"ba"),
                           Number(2.5), np.float64(1.25), np.int64(7), (1, 2), ("string", "s"), [], {}])
    plain = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-2**31, 2**31 - 1),
        "long": st.integers(-2**63, 2**63 - 1),
        "float": st.floats(width=32),
        "double": st.floats(),
        "string": st.text(),
        "bytes": st.binary(max_size=40),
    }[kind]
    return st.one_of(plain, *[plain] * 8, strange) if odd else plain


def values(schema: Any, named: dict[str, Any], odd: bool, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of ``schema`` in fastavro's form; with ``odd``, odd ones mixed in at every level."""
    if isinstance(schema, list):
        branches = [values(branch, named, odd, depth) for branch in schema]
        names = [branch if isinstance(branch, str) else branch.get("name", branch.get("type")) for branch in schema]
        named_branches = [st.tuples(st.just(name), branch) for name, branch in zip(names, branches, strict=True)]
        wrong = st.tuples(st.sampled_from([*names, "nothing"]), st.one_of(*branches))
        return st.one_of(*branches, *named_branches, *([wrong] if odd else []))
    if isinstance(schema, str):
        if schema in named:
            return values(named[schema], named, odd, depth)
        return _scalar(schema, odd)
    kind = schema["type"]
    if kind in ("record", "error"):
        fields = {f["name"]: values(f["type"], named, odd, depth + 1) for f in schema["fields"]}
        whole = st.fixed_dictionaries(fields)
        return st.one_of(whole, *[whole] * 8, st.fixed_dictionaries({}, optional=fields)) if odd else whole
    if kind == "array":
        if depth >= 3:
            return st.just([])
        items = st.lists(values(schema["items"], named, odd, depth + 1), max_size=3)
        return st.one_of(items, items, items.map(tuple)) if odd else items
    if kind == "map":
        keys = st.one_of(st.text(max_size=5), st.just(Text("k"))) if odd else st.text(max_size=5)
        return st.dictionaries(keys, values(schema["values"], named, odd, depth + 1), max_size=3)
    if kind == "enum":
        symbols = st.sampled_from(schema["symbols"])
        return st.one_of(symbols, st.just("none of them"), st.just(Text(schema["symbols"][0]))) if odd else symbols
    if isinstance(kind, (list, dict)) or kind in named:
        return values(kind, named, odd, depth)
    return _scalar(kind, odd)


def _check(name: str, value: Any) -> bool:
    """Compare with fastavro; True if the compiled writer wrote it."""
    schema = PARSED_SCHEMAS[name]
    expected, written = _fastavro(schema, value), PROGRAMS[name].write(value)
    if written is not None:
        assert not isinstance(expected, Exception), (
            f"{name}: written {written!r}, fastavro raised {expected!r} for {value!r}")
        assert written == expected, f"{name}: {value!r}"
    return written is not None


@pytest.mark.parametrize("name", sorted(PARSED_SCHEMAS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_what_the_compiled_writer_writes_is_fastavros_bytes(name: str, data: st.DataObject) -> None:
    schema = PARSED_SCHEMAS[name]
    named = schema.get("__named_schemas", {})
    _check(name, data.draw(st.booleans().flatmap(lambda odd: values(schema, named, odd))))


def test_the_install_built_the_compiled_writer() -> None:
    assert COMPILED


def _documents() -> list[Document]:
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    return [
        Document(id="v1", embedding=vector),
        Document(id="doc-\u00e9\U0001f600", text="text " * 50, blob=b"\x00\xff", uri="file:///x", mime_type="text/x",
                 tags={"s": "v", "n": 3, "big": 2**40, "f": 1.5, "t": True}, field_name="title",
                 modality="text", weight=0.5, offset=3, location=[1, 2], parent_id="p", granularity=1, adjacency=2,
                 scores={"cosine": Score(0.5, "ranker", Direction.SIMILARITY)},
                 chunks=[Document(id=f"c{i}", text="chunk", embedding=vector[:8]) for i in range(3)],
                 matches=[Document(id="m", scores={"bm25": Score(-1e300, "bm25", Direction.DISTANCE)})]),
    ]


@pytest.mark.parametrize("codec", [DOCUMENT, STORED_DOCUMENT], ids=["document", "stored"])
def test_documents_are_written_by_the_compiled_writer_as_fastavro_writes_them(codec: Any) -> None:
    for doc in _documents():
        record = doc_to_avro(doc, embeddings=codec is DOCUMENT)
        assert _check("document", record), "a document in fastavro's form goes by the compiled writer"
        expected = _fastavro(PARSED_SCHEMAS["document"], record)
        assert codec.encode(doc).endswith(expected) and codec.decode(codec.encode(doc)) is not None


def test_a_value_left_to_fastavro_is_written_or_refused_as_fastavro_does() -> None:
    """A tags value fastavro takes as a long only through its own conversion (numpy's int64), and one past a
    long (written as a double): both go by fastavro, through ``Codec.encode``, with its bytes."""
    for tag in (np.int64(7), 2**70, Text("x")):
        record = doc_to_avro(Document(id="d"))
        record["tags"] = {"k": tag}
        expected = _fastavro(PARSED_SCHEMAS["document"], record)
        assert PROGRAMS["document"].write(record) is None
        assert not isinstance(expected, Exception) and _check("document", record) is False
    record = doc_to_avro(Document(id="d"))
    record["weight"] = "heavy"
    assert PROGRAMS["document"].write(record) is None
    with pytest.raises((ValueError, TypeError)):
        fastavro.schemaless_writer(io.BytesIO(), PARSED_SCHEMAS["document"], record)


def test_a_record_with_a_type_key_is_left_to_fastavro_which_refuses_it_in_a_union() -> None:
    """A helper's find: fastavro's validation refuses a record whose "-type" is not its name (here the
    embedding's, in its union with null); the compiled writer wrote it."""
    record = doc_to_avro(Document(id="d"))
    record["embedding"] = {"-type": "wrong", "dtype": "<f4", "shape": [0], "data": b""}
    assert PROGRAMS["document"].write(record) is None
    assert isinstance(_fastavro(PARSED_SCHEMAS["document"], record), ValueError)


def test_a_key_whose_comparison_frees_what_is_being_written_is_left_to_fastavro() -> None:
    """A helper's find: a record dict with a str-subclass key whose hash collides with a field's made the field's
    lookup run its ``__eq__``, which freed the list being written (a use-after-free, a segfault). A record dict
    is written only when every key is an exact str, and what is written is held meanwhile."""
    top = doc_to_avro(Document(id="top"))

    class Key(str):
        armed = False

        def __hash__(self) -> int:
            return hash("id")

        def __eq__(self, other: object) -> bool:
            if Key.armed:
                Key.armed = False
                del top["chunks"]
            return False

    chunk: dict[Any, Any] = {Key("zz"): 1}
    chunk.update(doc_to_avro(Document(id="c")))
    top["chunks"] = [chunk, chunk]
    del chunk
    Key.armed = True
    assert PROGRAMS["document"].write(top) is None
    assert Key.armed, "no Python code ran while the compiled writer looked at the record"
