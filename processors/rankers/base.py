"""The ranker contract and the one ordering every ranked list uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from processors.document import Document, Score
from processors.index.base import Hit

__all__ = ["Ranker", "RankResult", "SCORE_NAME", "rank_key", "rank_order"]

SCORE_NAME = "score"
"""The name of the score a match is ranked by."""


@dataclass(frozen=True, slots=True)
class RankResult:
    """Ranked document matches, one list per query, best first."""

    matches: tuple[tuple[Document, ...], ...]


class Ranker(Protocol):
    def warm_up(self) -> None: ...

    def run(self, *, hits: Sequence[Sequence[Hit]], top_k: int) -> RankResult: ...


def rank_key(doc: Document) -> tuple[float, str]:
    """Best first by the ranking score's direction; ties broken by id, so order is stable."""
    return rank_order(doc.scores.get(SCORE_NAME), doc.id)


def rank_order(score: Score | None, doc_id: str) -> tuple[float, str]:
    """:func:`rank_key` of a document not built yet: its ranking score (None: last) and its id."""
    return (score.sort_key() if score is not None else float("inf"), doc_id)
