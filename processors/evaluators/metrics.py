"""Standard IR metrics, computed the way BEIR/pytrec_eval compute them."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["ndcg_at_k", "recall_at_k", "precision_at_k", "reciprocal_rank"]


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """nDCG@k with graded relevance and log2 discount (pytrec_eval's ``ndcg_cut``).

    :param ranked: document ids, best first.
    :param relevance: id -> grade; ids missing or graded <= 0 are not relevant.
    """
    dcg = sum(
        relevance.get(doc_id, 0) / math.log2(rank + 2)
        for rank, doc_id in enumerate(ranked[:k])
        if relevance.get(doc_id, 0) > 0
    )
    ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the first k."""
    relevant = {doc_id for doc_id, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def precision_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Share of the first k that is relevant (k, not the list length, is the denominator)."""
    if k <= 0:
        return 0.0
    return sum(1 for doc_id in ranked[:k] if relevance.get(doc_id, 0) > 0) / k


def reciprocal_rank(ranked: Sequence[str], relevance: Mapping[str, int]) -> float:
    """1 / rank of the first relevant document, 0 when none is found."""
    for rank, doc_id in enumerate(ranked, start=1):
        if relevance.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0
