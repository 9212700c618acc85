"""The one validation of Documents entering the system."""

import dataclasses
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.document import (
    _TEXT_REFUSED,
    MAX_ID_BYTES,
    Direction,
    Document,
    Score,
    _text_refused,
    _valid_quickly,
    _validate_node,
    validate_document,
    validate_id,
    validate_text,
)
from processors.exceptions import BadDocumentError, InvalidDocumentError


class TestValidateId:
    @pytest.mark.parametrize("doc_id", [
        "a", "std/os.path", "with space", "d/looks-like-a-key", "\u00fcnic\u00f8de \u6587\u5b57 \U0001f680",
        "x" * MAX_ID_BYTES, "\u00e9" * (MAX_ID_BYTES // 2),
    ])
    def test_accepted(self, doc_id: str) -> None:
        validate_id(doc_id)

    @pytest.mark.parametrize(("doc_id", "message"), [
        ("", "id must be a non-empty string"),
        ("evil\x00id", r"id 'evil\\x00id' contains NUL \(U\+0000\) at index 4"),
        ("tab\there", "control character U\\+0009 at index 3"),
        ("new\nline", "control character U\\+000A"),
        ("del\x7f", "control character U\\+007F"),
        ("c1\x85", "control character U\\+0085"),
        ("\ud800", r"id '\\ud800' contains a lone surrogate U\+D800 at index 0"),
        ("ok\udfff", "lone surrogate U\\+DFFF at index 2"),
        ("x" * (MAX_ID_BYTES + 1), f"is {MAX_ID_BYTES + 1} bytes in UTF-8; at most {MAX_ID_BYTES}"),
        ("\u00e9" * (MAX_ID_BYTES // 2 + 1), f"is {MAX_ID_BYTES + 2} bytes in UTF-8"),
    ])
    def test_refused_naming_the_field(self, doc_id: str, message: str) -> None:
        with pytest.raises(InvalidDocumentError, match=message) as refused:
            validate_id(doc_id)
        assert str(refused.value).isascii()  # it travels in headers and JSON
        assert isinstance(refused.value, BadDocumentError)

    def test_the_message_names_the_given_field(self) -> None:
        with pytest.raises(InvalidDocumentError, match=r"^docs\[3\]\.id "):
            validate_id("a\x00", name="docs[3].id")


class TestValidateText:
    @pytest.mark.parametrize("text", [
        None, "", "tabs\tand\nnewlines\r\n are text", "\x01\x85 control is fine", "\U0001f680",
    ])
    def test_accepted(self, text: str | None) -> None:
        validate_text(text)

    @pytest.mark.parametrize(("text", "message"), [
        ("a\x00b", r"text contains NUL \(U\+0000\) at index 1"),
        ("\ud83d", r"text contains a lone surrogate U\+D83D at index 0"),
        ("x\udc80", "lone surrogate U\\+DC80 at index 1"),
    ])
    def test_refused(self, text: str, message: str) -> None:
        with pytest.raises(InvalidDocumentError, match=message):
            validate_text(text)


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()) | st.sampled_from(["\x00", "\ud800", "\udfff", "a", "\u00e9"])))
def test_the_text_check_without_the_regex_refuses_exactly_what_the_regex_finds(text: str) -> None:
    """``_text_refused`` takes shortcuts (NUL by ``in``, ASCII by its flag, surrogates by UTF-8 encoding): over
    any text, surrogates and NUL anywhere, it must agree with the pattern that names the character."""
    assert _text_refused(text) is (_TEXT_REFUSED.search(text) is not None)


class TestValidateDocument:
    def test_a_plain_document_passes(self) -> None:
        validate_document(Document(id="a", text="Some sentence here.", tags={"k": "v"},
                                   chunks=[Document(id="a/0", text="Some sentence here.")]))

    @pytest.mark.parametrize(("doc", "message"), [
        (Document(id="evil\x00id", text="Some sentence here."), r"^id 'evil\\x00id' contains NUL"),
        (Document(id="a", text="bad \ud800"), "^text contains a lone surrogate"),
        (Document(id="a", text="nul\x00"), r"^text contains NUL"),
        (Document(id="a", tags={"k": "\ud800"}), r"^tags\['k'\] contains a lone surrogate"),
        (Document(id="a", tags={"\x00": "v"}), r"^tags key '\\x00' contains NUL"),
        (Document(id="a", chunks=[Document(id="a/0"), Document(id="a/1", text="\x00")]),
         r"^chunks\[1\]\.text contains NUL"),
    ])
    def test_refused_naming_the_field(self, doc: Document, message: str) -> None:
        with pytest.raises(InvalidDocumentError, match=message):
            validate_document(doc)


class TestEmbeddingValidation:
    """What an index stores is float32: an embedding must be finite there, and small enough that
    inner products and L2 distances stay finite."""

    @pytest.mark.parametrize("vector, message", [
        (np.full(4, 1e300), "NaN or infinite values \\(as float32\\)"),
        (np.array([1.0, np.nan]), "NaN or infinite"),
        (np.full(4, 1e16, dtype=np.float32), "beyond"),
        (np.concatenate([np.full(383, 1e-3, np.float32), [1.01e15]]).astype(np.float32), "beyond"),
        (np.concatenate([np.ones(383, np.float32), [np.inf]]).astype(np.float32), "NaN or infinite"),
        (np.full(4, 10**17, dtype=np.int64), "beyond"),
        (np.array(["1.0"]), "dtype <U3"),
        (np.array([1 + 2j]), "complex128"),
    ])
    def test_refused(self, vector: np.ndarray, message: str) -> None:
        with pytest.raises(InvalidDocumentError, match=message):
            validate_document(Document(id="d", chunks=[Document(id="d/0", embedding=vector)]))

    def test_accepted(self) -> None:
        # 384 values of 9e14 square to more than 1e30 in sum: past the one-call test, accepted by the exact pass
        for vector in (np.ones(384, np.float32), np.arange(8, dtype=np.int16), np.full(3, -1e15), np.empty(0),
                       np.full(384, 9e14, np.float32), np.ones((1, 384), np.float32)):
            validate_document(Document(id="d", embedding=vector))


def _array(values: list[float], dtype: type, rows: int) -> np.ndarray:
    """``rows`` copies of ``values`` as a (rows, n) array of ``dtype`` (an integer dtype takes what the
    cast makes of NaN and infinities)."""
    with np.errstate(all="ignore"):
        return np.array(values * rows, dtype=np.float64).reshape(rows, -1).astype(dtype)


def _hostile_documents() -> st.SearchStrategy[Document]:
    """Documents whose every field may hold what validation refuses: NUL, lone surrogates, NaN and
    infinities, values past the bound alone or only together, other dtypes and shapes."""
    text = st.text(alphabet=st.sampled_from(["a", " ", "\x00", "\ud800", "\x1f", "\u00e9"]), max_size=4)
    value = st.sampled_from([0.0, 1.0, -1e15, 1.1e15, 9e14, np.inf, -np.inf, np.nan, 1e300])
    embedding = st.none() | st.builds(_array, st.lists(value, max_size=4),
                                      st.sampled_from([np.float32, np.float64, np.int64]), st.integers(1, 2))
    tag = st.one_of(text, st.booleans(), st.integers(-2**64, 2**64), value)
    leaf = st.builds(
        Document, id=st.just("d"), text=st.none() | text, embedding=embedding,
        tags=st.dictionaries(text, tag, max_size=2), weight=value,
        scores=st.dictionaries(text, st.builds(Score, value, st.just("op"), st.just(Direction.SIMILARITY)),
                               max_size=1))
    return st.recursive(leaf, lambda children: st.builds(
        lambda doc, chunks, matches: dataclasses.replace(doc, chunks=chunks, matches=matches),
        leaf, st.lists(children, max_size=3), st.lists(children, max_size=2)), max_leaves=10)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_hostile_documents())
def test_the_quick_pass_never_accepts_what_the_named_walk_refuses(doc: Document) -> None:
    """``validate_document`` settles most documents without naming fields (``_valid_quickly``); whatever
    it settles as valid, the walk that names each field must find valid too."""
    try:
        _validate_node(doc, "")
        refused = None
    except InvalidDocumentError as exc:
        refused = str(exc)
    if _valid_quickly(doc):
        assert refused is None
    with pytest.raises(InvalidDocumentError) if refused else nullcontext():
        validate_document(doc)
