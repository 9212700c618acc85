"""Chunk hits grouped into their documents, one aggregated score per document."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from processors.document import Document, Score
from processors.exceptions import ConfigError
from processors.index.base import Hit
from processors.rankers.base import SCORE_NAME, RankResult, rank_key

__all__ = ["Chunk2DocRankerConfig", "Chunk2DocRanker"]

Aggregation = Literal["min", "max", "mean"]
_AGGREGATE = {"min": np.min, "max": np.max, "mean": np.mean}


@dataclass(frozen=True, slots=True)
class Chunk2DocRankerConfig:
    """How chunk scores become a document score.

    :param aggregation: ``min``, ``max`` or ``mean`` of the document's chunk scores. With a
        similarity ``max`` keeps the best chunk; with a distance ``min`` does.
    :param keep_chunks: matched chunks kept on each match (best first), to show why it matched.
    """

    aggregation: Aggregation = "max"
    keep_chunks: int = 3

    def __post_init__(self) -> None:
        if self.aggregation not in _AGGREGATE:
            raise ConfigError(
                f"Chunk2DocRanker: aggregation {self.aggregation!r}; use one of {sorted(_AGGREGATE)}"
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
            (best first) and a ``score`` whose op_name names the aggregation and the metric.
        """
        return RankResult(matches=tuple(tuple(self._rank(query_hits, top_k)) for query_hits in hits))

    def _rank(self, hits: Sequence[Hit], top_k: int) -> list[Document]:
        groups: dict[str, list[Hit]] = {}
        for hit in hits:
            groups.setdefault(hit.root.id, []).append(hit)
        matches = []
        for group in groups.values():
            first = group[0].score
            if any(hit.score.direction is not first.direction for hit in group):
                raise ConfigError("Chunk2DocRanker: chunk scores of one document mix distance and similarity")
            value = float(_AGGREGATE[self.config.aggregation]([hit.score.value for hit in group]))
            score = Score(value, f"chunk2doc.{self.config.aggregation}({first.op_name})", first.direction)
            best_chunks = sorted(group, key=lambda hit: (hit.score.sort_key(), hit.node.id))
            root = group[0].root
            matches.append(
                dataclasses.replace(
                    root,
                    embedding=None,
                    chunks=[hit.node for hit in best_chunks[: self.config.keep_chunks] if hit.node is not root],
                    matches=[],
                    scores={**root.scores, SCORE_NAME: score},
                    adjacency=1,
                )
            )
        matches.sort(key=rank_key)
        return matches[:top_k]
