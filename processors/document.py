"""The recursive Document: what flows through every stage.

A Document holds chunks (its parts, one granularity down) and matches (results, one
adjacency away). Scores carry their operator name and a direction, so that any sort
knows whether smaller or larger is better.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

__all__ = ["Direction", "Score", "Document", "traverse", "copy_tree"]


class Direction(str, enum.Enum):
    """Which way a score is better: a distance is better small, a similarity large."""

    DISTANCE = "distance"
    SIMILARITY = "similarity"


@dataclass(frozen=True, slots=True)
class Score:
    """A score with the operator that produced it and its direction."""

    value: float
    op_name: str
    direction: Direction

    def sort_key(self) -> float:
        """A key under which ascending order puts the best score first."""
        return self.value if self.direction is Direction.DISTANCE else -self.value


@dataclass(slots=True)
class Document:
    """A unit of search: a text, its chunks, its embedding, its matches."""

    id: str
    parent_id: str | None = None
    granularity: int = 0
    adjacency: int = 0
    mime_type: str = "text/plain"
    text: str | None = None
    blob: bytes | None = None
    uri: str | None = None
    embedding: np.ndarray | None = None
    tags: dict[str, str] = field(default_factory=dict)
    field_name: str | None = None
    modality: str | None = None
    weight: float = 1.0
    offset: int = 0
    location: list[int] = field(default_factory=list)
    scores: dict[str, Score] = field(default_factory=dict)
    chunks: list[Document] = field(default_factory=list)
    matches: list[Document] = field(default_factory=list)


def traverse(doc: Document, path: str) -> Iterator[Document]:
    """Yield the documents a traversal path names, Jina-style.

    ``r`` is the root, each ``c`` goes one level into chunks and each ``m`` into matches:
    ``c`` yields the chunks, ``cc`` the chunks of chunks, ``cm`` the matches of chunks.

    :param doc: the root document.
    :param path: a string of ``r``, ``c`` and ``m``; ``r`` only alone.
    :raises ValueError: on any other letter.
    """
    if path == "r":
        yield doc
        return
    if not path or any(step not in "cm" for step in path):
        raise ValueError(f"traversal path {path!r}: use 'r' or a string of 'c' and 'm'")
    children = doc.chunks if path[0] == "c" else doc.matches
    rest = path[1:]
    for child in children:
        if rest:
            yield from traverse(child, rest)
        else:
            yield child


def copy_tree(doc: Document) -> Document:
    """Copy the tree (not the arrays), so a processor never mutates its caller's documents."""
    return dataclasses.replace(
        doc,
        chunks=[copy_tree(c) for c in doc.chunks],
        matches=[copy_tree(m) for m in doc.matches],
        tags=dict(doc.tags),
        scores=dict(doc.scores),
        location=list(doc.location),
    )
