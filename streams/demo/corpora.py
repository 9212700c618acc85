"""Document sources for the CLI: Python standard-library docstrings, JSONL files, BEIR folders."""

from __future__ import annotations

import ast
import base64
import binascii
import json
import sysconfig
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processors.document import Document, TagValue, validate_document
from processors.exceptions import InvalidDocumentError
from processors.images import IMAGE_LIMITS, sniff_mime_type
from streams.exceptions import StreamsearchError

__all__ = ["TITLE_TAG", "BeirDataset", "load_beir", "read_jsonl", "stdlib_docstrings"]

TITLE_TAG = "title"
"""The tag that names a document for people (a docstring's qualified name, a BEIR title, a JSONL
line's ``title``): results show it next to the id."""

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_docstrings(limit: int | None = None) -> Iterator[Document]:
    """Module, class and function docstrings of the standard library on this machine.

    Parsed with ``ast``, never imported: importing arbitrary modules has side effects (one
    opens a web browser). Doc id and title are the qualified name, text the docstring.
    Modules come first, then classes, then functions, so a small ``limit`` still covers
    the whole library at module level.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    by_depth: dict[int, list[Document]] = {0: [], 1: [], 2: []}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("_") and part != "__init__.py" for part in relative.parts):
            continue
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for depth, name, node in _documented(tree, module):
            text = ast.get_docstring(node, clean=True)
            if text and len(text) >= 20:
                by_depth[depth].append(Document(id=name, text=text, tags={TITLE_TAG: name, "module": module}))
    docs = by_depth[0] + by_depth[1] + by_depth[2]
    yield from docs[:limit] if limit is not None else docs


def _documented(tree: ast.Module, module: str) -> Iterator[tuple[int, str, ast.AST]]:
    """(depth, qualified name, node): 0 for the module, 1 for classes, 2 for functions."""
    yield 0, module, tree
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield 2, f"{module}.{node.name}", node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield 1, f"{module}.{node.name}", node
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    yield 2, f"{module}.{node.name}.{item.name}", item


def read_jsonl(path: Path, *, fields: Sequence[str] | None = None) -> Iterator[Document]:
    """Documents from JSON lines: ``id``, ``text``, an optional ``embedding`` (a list of numbers: a
    pre-embedded document), an image as ``blob`` (base64) or ``uri`` (a file under the JSONL's folder,
    a path or a ``file:`` URI, read into ``blob``), and other values as tags (the fields a multi-field flow maps, e.g.
    ``{"id": "10", "title": "...", "summary": "..."}``; numbers and booleans stay typed, so that
    a filter ``tags.minutes__lte: 10`` compares numbers).

    :param path: the file.
    :param fields: the fields the flow maps (``text`` or tag names); ``()`` for a flow without
        fields, where ``text`` is required; None when unknown (a flow given by name): then a
        line needs ``text`` or at least one other string value.
    :raises StreamsearchError: naming the file and line, and what is wrong with it: not a JSON
        object, an id that is neither a string nor an integer, a list or object other than
        ``embedding``, nothing to index, or a document ``validate_document`` refuses (a NaN in
        the embedding, a NUL in the text).
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StreamsearchError(f"{where}: invalid JSON: {exc.msg}") from exc
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise StreamsearchError(f"{where}: invalid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise StreamsearchError(f"{where}: need a JSON object with 'id', got a {type(row).__name__}")
            blob, uri = _row_image(row, path.parent, where)
            doc = Document(id=_row_id(row.get("id"), where), text=_row_text(row.get("text"), where),
                           tags=_row_tags(row, where), embedding=_row_embedding(row.get("embedding"), where),
                           blob=blob, uri=uri, mime_type=_mime_type(blob), modality="image" if blob else None)
            _check_content(doc, fields, where)
            try:
                validate_document(doc)
            except InvalidDocumentError as exc:
                raise StreamsearchError(f"{where}: {exc}") from exc
            yield doc


def _row_id(value: object, where: str) -> str:
    """An id as a string: an integer is taken as its decimal digits; other numbers are refused,
    since ``1.0`` and ``1`` would name different documents."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise StreamsearchError(f"{where}: need an 'id' (a string, or an integer taken as a string)")
    if isinstance(value, float):
        raise StreamsearchError(f"{where}: 'id' {value!r} is a number but not an integer; write ids as strings, "
                                f"e.g. \"id\": \"{value!r}\"")
    shown = json.dumps(value) if isinstance(value, bool) else f"a {type(value).__name__}"
    raise StreamsearchError(f"{where}: 'id' must be a string (or an integer, taken as a string), got {shown}")


def _row_tags(row: dict[str, object], where: str) -> dict[str, TagValue]:
    """Other values as tags: strings, numbers and booleans as they are (typed), null skipped; a
    list or object is refused (nothing a user wrote is dropped without a word)."""
    tags = {}
    for key, value in row.items():
        if key in ("id", "text", "embedding", "blob", "uri") or value is None:
            continue
        if isinstance(value, (str, bool, int, float)):
            tags[key] = value
        else:
            raise StreamsearchError(f"{where}: field {key!r} is a {type(value).__name__}; fields are strings, "
                                    "numbers or booleans, and only 'embedding' may be a list of numbers")
    return tags


def _row_embedding(value: object, where: str) -> np.ndarray | None:
    """A pre-embedded document's vector: a flat list of numbers, sent as float32 (checked as every
    stage checks it; its width is checked against the flow's model by the encode stage)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise StreamsearchError(f"{where}: 'embedding' must be a non-empty list of numbers")
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype="<f4")


def _row_image(row: dict[str, object], folder: Path, where: str) -> tuple[bytes | None, str | None]:
    """A line's image bytes and uri: ``blob`` as base64, or the local file ``uri`` names (``file:`` or a
    path) read; a ``uri`` of another scheme is kept as it is, unread."""
    blob, uri = row.get("blob"), row.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise StreamsearchError(f"{where}: 'uri' must be a string, got a {type(uri).__name__}")
    if blob is not None:
        if not isinstance(blob, str):
            raise StreamsearchError(f"{where}: 'blob' must be base64 text, got a {type(blob).__name__}")
        try:
            return base64.b64decode(blob, validate=True), uri
        except binascii.Error as exc:
            raise StreamsearchError(f"{where}: 'blob' is not base64: {exc}") from None
    if uri is None or ("://" in uri and not uri.startswith("file:")):
        return None, uri
    parsed = urllib.parse.urlparse(uri)
    file = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(uri)
    file = (file if file.is_absolute() else folder / file).resolve()
    if not file.is_relative_to(folder.resolve()):
        raise StreamsearchError(f"{where}: 'uri' {uri!r} is outside {folder.resolve()}: only files under the JSONL's "
                                "folder are read (a JSONL from elsewhere must not copy this machine's files into "
                                "Kafka); copy or link them there")
    if not file.is_file():
        raise StreamsearchError(f"{where}: 'uri' {uri!r} is not a regular file")
    if file.stat().st_size > IMAGE_LIMITS.max_bytes:
        raise StreamsearchError(f"{where}: 'uri' {uri!r} is {file.stat().st_size} bytes; images are read up to "
                                f"{IMAGE_LIMITS.max_bytes}")
    try:
        return file.read_bytes(), uri
    except OSError as exc:
        raise StreamsearchError(f"{where}: 'uri' {uri!r}: {exc.strerror or exc}") from None


def _mime_type(blob: bytes | None) -> str:
    if blob is None:
        return "text/plain"
    return sniff_mime_type(blob) or "application/octet-stream"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
"""What ``read_image_directory`` takes for an image, by file name."""


def read_image_directory(folder: Path) -> Iterator[Document]:
    """One document per image file under ``folder`` (recursively, in path order): id = its path relative to
    ``folder`` (``/``-separated), ``blob`` its bytes, ``uri`` its ``file://`` URI. Whether a file decodes is
    the segment stage's to find (it dead-letters what does not, naming the file).

    :raises StreamsearchError: if the folder holds no image file, or one cannot be read.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise StreamsearchError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    for file in files:
        try:
            blob = file.read_bytes()
        except OSError as exc:
            raise StreamsearchError(f"{file}: {exc.strerror or exc}") from None
        yield Document(id=file.relative_to(folder).as_posix(), blob=blob, uri=file.resolve().as_uri(),
                       mime_type=_mime_type(blob), modality="image")


def _row_text(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise StreamsearchError(f"{where}: 'text' must be a string, got a {type(value).__name__}")


def _check_content(doc: Document, fields: Sequence[str] | None, where: str) -> None:
    """Refuse a line that would index nothing: no text where the flow needs it, no mapped field.
    A line with an embedding is indexed by it."""
    if doc.text or doc.embedding is not None or doc.blob:
        return
    if fields is None:
        if not doc.tags:
            raise StreamsearchError(f"{where}: need 'text', or fields (other string values) for a flow that maps them")
    elif not fields:
        raise StreamsearchError(f"{where}: need 'text': this flow maps no fields")
    elif not any(doc.tags.get(name) for name in fields):
        raise StreamsearchError(f"{where}: need 'text' or one of the flow's fields: {', '.join(fields)}")


@dataclass(frozen=True, slots=True)
class BeirDataset:
    """A BEIR folder: corpus, queries and graded relevance of the test split."""

    corpus: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    """Read corpus.jsonl, queries.jsonl and qrels/<split>.tsv; document text = title + " " + text.

    Only queries that have judgements are kept, as BEIR evaluates them.
    """
    folder = Path(folder)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise StreamsearchError(f"{folder} is not a BEIR folder: {name} is missing")
    corpus = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            title = row.get("title") or ""
            corpus.append(Document(id=str(row["_id"]), text=f"{title} {row.get('text') or ''}", tags={TITLE_TAG: title}))
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        for number, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if number == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            query_id, doc_id, grade = parts[0], parts[1], int(parts[-1])
            qrels.setdefault(query_id, {})[doc_id] = grade
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)
