"""Chunk hits grouped into their documents, one aggregated score per document."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from processors.document import Direction, Document, Score
from processors.exceptions import ConfigError
from processors.index.base import Hit
from processors.rankers.base import SCORE_NAME, RankResult, rank_order

__all__ = ["Chunk2DocRankerConfig", "Chunk2DocRanker"]

Aggregation = Literal["min", "max", "mean", "sum", "inverse"]
_AGGREGATE = {"min": min, "max": max, "mean": np.mean, "sum": np.sum}
"""min and max of Python floats are exact in any order (numpy's, on a list of a few, cost 7 µs a document);
mean and sum keep numpy's pairwise summation."""


@dataclass(frozen=True, slots=True)
class Chunk2DocRankerConfig:
    """How chunk scores become a document score.

    :param aggregation: ``min``, ``max``, ``mean`` or ``sum`` of the document's chunk scores
        (same direction as the chunks'). With a similarity ``max`` keeps the best chunk; with a
        distance ``min`` does. ``inverse`` turns distances into a similarity, 1 / (1 + min d).
    :param keep_chunks: matched chunks kept on each match (best first), to show why it matched.
    """

    aggregation: Aggregation = "max"
    keep_chunks: int = 3

    def __post_init__(self) -> None:
        if self.aggregation not in (*_AGGREGATE, "inverse"):
            raise ConfigError(
                f"Chunk2DocRanker: aggregation {self.aggregation!r}; use one of {sorted([*_AGGREGATE, 'inverse'])}"
            )
        if self.keep_chunks < 0:
            raise ConfigError("Chunk2DocRanker: keep_chunks must be >= 0")


class Chunk2DocRanker:
    """Ranks root documents by an aggregate of their matched chunks' scores."""

    def __init__(self, config: Chunk2DocRankerConfig | None = None) -> None:
        self.config = config or Chunk2DocRankerConfig()

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, hits: Sequence[Sequence[Hit]], top_k: int) -> RankResult:
        """Group each query's hits by root document, aggregate, sort by direction, cut to top_k.

        :param hits: per query, vector hits (any order).
        :param top_k: documents per query.
        :returns: per query, root documents best first; each carries its matched chunks
            (best first) and a ``score`` whose op_name names the aggregation and the metric. Its
            ``embedding`` is its best chunk's vector when the hits carry vectors (the index's
            ``with_vectors``, for diversity), else None; the chunks kept carry none.
        """
        return RankResult(matches=tuple(tuple(self._rank(query_hits, top_k)) for query_hits in hits))

    def _rank(self, hits: Sequence[Hit], top_k: int) -> list[Document]:
        """Documents ranked on their hits' scores and ids alone; only the ``top_k`` kept are read (``Hit.held``),
        one whose document is gone is passed over."""
        groups: dict[str, list[Hit]] = {}
        for hit in hits:
            groups.setdefault(hit.doc_id, []).append(hit)
        scored = []
        for doc_id, group in groups.items():
            first = group[0].score
            if any(hit.score.direction is not first.direction for hit in group):
                raise ConfigError("Chunk2DocRanker: chunk scores of one document mix distance and similarity")
            score = self._aggregate(group, first)
            scored.append((rank_order(score, doc_id), score, group))
        scored.sort(key=lambda entry: entry[0])
        matches: list[Document] = []
        for _, score, group in scored:
            if len(matches) == top_k:
                break
            held = [hit for hit in group if hit.held]
            if held:
                matches.append(self._match(held, score))
        return matches

    def _match(self, group: list[Hit], score: Score) -> Document:
        """The root document as a match: its score, its best chunks, its best chunk's vector."""
        best_chunks = sorted(group, key=lambda hit: (hit.score.sort_key(), hit.node.id))
        root = group[0].root
        return dataclasses.replace(
            root,
            embedding=best_chunks[0].node.embedding,
            chunks=[_without_vector(hit.node) for hit in best_chunks[: self.config.keep_chunks] if hit.node is not root],
            matches=[],
            scores={**root.scores, SCORE_NAME: score},
            adjacency=1,
        )

    def _aggregate(self, group: list[Hit], first: Score) -> Score:
        values = [hit.score.value for hit in group]
        name = self.config.aggregation
        if name == "inverse":
            if first.direction is not Direction.DISTANCE:
                raise ConfigError("Chunk2DocRanker: 'inverse' turns distances into similarities; these are similarities")
            return Score(1.0 / (1.0 + min(values)), f"chunk2doc.inverse({first.op_name})", Direction.SIMILARITY)
        return Score(float(_AGGREGATE[name](values)), f"chunk2doc.{name}({first.op_name})", first.direction)


def _without_vector(node: Document) -> Document:
    """The node without its vector: the match carries its best one already, once."""
    return dataclasses.replace(node, embedding=None) if node.embedding is not None else node
