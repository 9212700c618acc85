"""What the query-language tests share: a tree of documents with a list of three on every path."""

from __future__ import annotations

from typing import TypedDict

from processors.document import Direction, Document, Score

PATHS = ("r", "c", "m", "cc", "cm", "mm")
"""Every traversal path of the tree ``node`` builds: the roots, and two levels of chunks and matches."""


class Position(TypedDict):
    text: str | None
    weight: float
    tags: dict[str, str]
    score: float | None


# Every list in the tree holds three documents, alike by position: 0 red, 1 blue, 2 bare.
POSITIONS: tuple[Position, ...] = (
    {"text": "Red apple", "weight": 3.0, "tags": {"color": "red", "size": "10"}, "score": 0.2},
    {"text": "blue Sky", "weight": 1.0, "tags": {"color": "blue"}, "score": 0.9},
    {"text": None, "weight": 2.0, "tags": {}, "score": None},
)


def node(doc_id: str, position: int, depth: int) -> Document:
    """The document at ``position`` of its list, with three chunks and three matches below it down to depth 2."""
    spec = POSITIONS[position]
    scores = {} if spec["score"] is None else {"score": Score(spec["score"], "cosine", Direction.SIMILARITY)}
    children = range(3) if depth < 2 else ()
    return Document(
        id=doc_id, text=spec["text"], weight=spec["weight"], tags=dict(spec["tags"]), scores=scores,
        chunks=[node(f"{doc_id}.c{i}", i, depth + 1) for i in children],
        matches=[node(f"{doc_id}.m{i}", i, depth + 1) for i in children],
    )
