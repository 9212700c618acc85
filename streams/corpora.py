"""Document sources for the CLI: Python standard-library docstrings, JSONL files, BEIR folders."""

from __future__ import annotations

import ast
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from processors.document import Document
from streams.exceptions import StreamsearchError

__all__ = ["stdlib_docstrings", "read_jsonl", "BeirDataset", "load_beir"]

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
                by_depth[depth].append(Document(id=name, text=text, tags={"title": name, "module": module}))
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


def read_jsonl(path: Path) -> Iterator[Document]:
    """Documents from JSON lines with ``id`` and ``text`` (other string fields become tags).

    :raises StreamsearchError: naming the line that is not a JSON object with id and text.
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StreamsearchError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
            if not isinstance(row, dict) or not isinstance(row.get("id"), (str, int)) or not isinstance(row.get("text"), str):
                raise StreamsearchError(f"{path}:{number}: need an object with 'id' and 'text'")
            tags = {k: v for k, v in row.items() if k not in ("id", "text") and isinstance(v, str)}
            yield Document(id=str(row["id"]), text=row["text"], tags=tags)


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
            corpus.append(Document(id=str(row["_id"]), text=f"{title} {row.get('text') or ''}", tags={"title": title}))
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
