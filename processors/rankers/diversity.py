"""Diversity: maximal marginal relevance (Carbonell & Goldstein, "The Use of MMR, Diversity-Based Reranking for
Reordering Documents and Producing Summaries", SIGIR 1998) over one query's candidates.

Documents are picked one at a time, each the argmax of ``λ · rel(d) − (1 − λ) · max over picked s of sim(d, s)``:
``rel`` is the candidate's ranking score min-max normalised over the candidates (distances flipped, so 1 is the
best; all equal gives 1 each), ``sim`` the cosine of the candidates' vectors (a candidate without a vector, or
with a zero one, has similarity 0 with every other). Before the first pick the penalty is 0, so the first pick
is the most relevant. λ = 1 ranks by relevance alone; λ = 0 by novelty alone. Equal objectives are broken by
relevance, then document id, so the order never depends on the order of the input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from processors.document import Direction, Document, Score
from processors.rankers.base import rank_key

__all__ = ["MMR_SCORE", "diversify", "mmr"]

MMR_SCORE = "mmr"
"""The score name of a diversified match's MMR objective when it was picked (``op_name`` ``diversity.mmr``)."""


def mmr(relevance: Sequence[float], vectors: Sequence[np.ndarray | None], ids: Sequence[str], *,
        diversity: float, picks: int | None = None) -> list[tuple[int, float]]:
    """The MMR order of the candidates.

    :param relevance: each candidate's relevance, larger is better (any scale: min-max normalised here).
    :param vectors: each candidate's vector (any norm: cosine is taken), None when it has none.
    :param ids: each candidate's document id, for ties.
    :param diversity: λ in [0, 1].
    :param picks: candidates to pick; None picks them all (a full re-ordering).
    :returns: (candidate index, its objective when picked), in picking order.
    """
    count = len(ids)
    rel = _minmax(np.asarray(relevance, dtype=np.float64))
    units = _unit_rows(vectors)
    nearest = np.full(count, -np.inf)  # each candidate's largest similarity to a picked one
    open_ = np.ones(count, dtype=bool)
    order: list[tuple[int, float]] = []
    for _ in range(count if picks is None else min(picks, count)):
        penalty = nearest if order else np.zeros(count)
        objective = np.where(open_, diversity * rel - (1.0 - diversity) * penalty, -np.inf)
        best = objective.max()
        pick = min(np.flatnonzero(objective == best).tolist(), key=lambda i: (-rel[i], ids[i]))
        order.append((int(pick), float(best)))
        open_[pick] = False
        nearest = np.maximum(nearest, units @ units[pick])
    return order


def diversify(matches: Sequence[Document], *, diversity: float, picks: int | None = None,
              sources: Sequence[Document] | None = None) -> list[Document]:
    """One query's matches in MMR order, each with its objective as the score :data:`MMR_SCORE`.

    :param matches: the candidates, each document once.
    :param picks: matches kept; None keeps them all, re-ordered.
    :param sources: where each match's ranking score and vector are read (aligned with ``matches``): the
        candidates before the join stage's operations, which may have selected those fields away; default
        ``matches``.
    """
    read = list(sources) if sources is not None else list(matches)
    relevance = [-rank_key(doc)[0] for doc in read]
    order = mmr(relevance, [doc.embedding for doc in read], [doc.id for doc in matches],
                diversity=diversity, picks=picks)
    return [dataclasses.replace(matches[i], scores={**matches[i].scores, MMR_SCORE: Score(
        value, "diversity.mmr", Direction.SIMILARITY)}) for i, value in order]


def _minmax(values: np.ndarray) -> np.ndarray:
    """Values mapped to [0, 1], 1 the largest; all 1 when they are equal. A candidate without a score
    (relevance -inf) counts as the least relevant."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.ones(len(values))
    values = np.where(np.isfinite(values), values, finite.min())
    low, high = values.min(), values.max()
    return np.ones(len(values)) if high == low else (values - low) / (high - low)


def _unit_rows(vectors: Sequence[np.ndarray | None]) -> np.ndarray:
    """The vectors as unit rows of one matrix (float64, so that cosines do not depend on float32 rounding
    of a sum's order); a missing or zero vector is a zero row: similarity 0 with everything."""
    width = max((np.asarray(v).size for v in vectors if v is not None), default=0)
    rows = np.zeros((len(vectors), width))
    for i, vector in enumerate(vectors):
        if vector is None:
            continue
        row = np.asarray(vector, dtype=np.float64).reshape(-1)
        norm = np.linalg.norm(row)
        if row.size == width and norm > 0:
            rows[i] = row / norm
    return rows
