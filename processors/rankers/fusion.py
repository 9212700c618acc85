"""Hybrid retrieval: one query's dense and lexical candidates fused into one ranking.

Each shard sends, per query, the union of its dense and its lexical top lists, each document once with
its arm scores under :data:`DENSE_ARM` / :data:`LEXICAL_ARM`. Fusing happens here, on the union over
all shards, not on a shard: a rank, a mean or a standard deviation over one shard's list depends on how
the corpus is split, while the union of every shard's top ``depth`` holds each arm's GLOBAL top
``depth``, so 1 and 4 shards fuse alike.

Per arm the candidates carrying its score are ranked best first (:meth:`Score.sort_key`, ties by
document id) and cut to ``depth``; a document outside an arm's list gets nothing from it. Three methods:

* ``rrf`` -- reciprocal rank fusion (Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms
  Condorcet and individual Rank Learning Methods", SIGIR 2009): ``sum over arms of 1 / (k + rank)``,
  rank from 1; the paper's k is 60.
* ``dbsf`` -- distribution-based score fusion as Qdrant implements it (``lib/segment/src/common/
  score_fusion.rs``, ``distr_norm``; Qdrant ≥ 1.11): each arm's scores are mapped linearly from
  ``[mean - 3 std, mean + 3 std]`` to [0, 1], std being the SAMPLE standard deviation (n - 1), and
  summed. Like Qdrant: no clipping (a score past 3 std lands outside [0, 1]), a list of one score or of
  equal scores normalises to 0.5, and a distance is flipped, ``(max - d) / (max - min)``.
* ``linear`` -- ``w * minmax(dense) + (1 - w) * minmax(lexical)``, each arm min-max normalised over its
  list (distances flipped, so 1 is the best); a list whose scores are all equal (one score, say) gives 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from processors.document import Direction, Document, Score
from processors.exceptions import ConfigError
from processors.query.parameters import DEFAULT_FUSION, FUSIONS, SearchParameters
from processors.rankers.base import SCORE_NAME

__all__ = ["ARMS", "DENSE_ARM", "LEXICAL_ARM", "ArmList", "FusionConfig", "arm_lists", "dbsf", "fuse",
           "linear", "merge_candidates", "rank_name", "rrf"]

DENSE_ARM = "dense"
"""The score name of a match's dense (vector) arm score."""

LEXICAL_ARM = "lexical"
"""The score name of a match's lexical (BM25) arm score."""

ARMS = (DENSE_ARM, LEXICAL_ARM)
"""The arms, in the order every sum over them runs (so a fused score never depends on input order)."""


def rank_name(arm: str) -> str:
    """The score name of a fused match's rank in one arm's global list (1 = the arm's best)."""
    return f"{arm}.rank"


@dataclass(frozen=True, slots=True)
class FusionConfig:
    """How one query's arms are fused.

    :param method: one of :data:`processors.query.parameters.FUSIONS`.
    :param rrf_k: the constant k of ``rrf``.
    :param depth: documents per arm's global list (``SearchParameters.arm_depth``).
    :param dense_weight: w of ``linear``; the lexical arm gets 1 - w.
    """

    method: str = DEFAULT_FUSION
    rrf_k: int = 60
    depth: int = 100
    dense_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ConfigError(f"fusion: method {self.method!r}; use one of {', '.join(FUSIONS)}")
        if self.rrf_k < 0 or self.depth < 1 or not 0.0 <= self.dense_weight <= 1.0:
            raise ConfigError(f"fusion: rrf_k {self.rrf_k} must be >= 0, depth {self.depth} >= 1 and "
                              f"dense_weight {self.dense_weight} in [0, 1]")

    @classmethod
    def of(cls, params: SearchParameters) -> FusionConfig:
        """The fusion a (checked) search request asks for."""
        return cls(params.fusion, params.rrf_k, params.arm_depth, params.dense_weight)


@dataclass(frozen=True, slots=True)
class ArmList:
    """One arm's global list for a query: document ids and their arm scores, best first."""

    arm: str
    ids: tuple[str, ...]
    scores: tuple[Score, ...]

    def values(self) -> list[float]:
        """The scores turned so that larger is better (a distance negated)."""
        return [-score.sort_key() for score in self.scores]


def merge_candidates(lists: Iterable[Sequence[Document]]) -> list[Document]:
    """One candidate per document from several parts' matches, each arm keeping its best score.

    A document reaches the joiner twice when a partition moves between processes (two shards answer
    for it) or, in multi-field flows, once per field: its arm scores are then the best over the copies,
    so each arm's list spans every field. The rest of the match (chunks, tags) is the first copy's,
    parts being handed over in (shard, field) order.
    """
    merged: dict[str, Document] = {}
    for matches in lists:
        for doc in matches:
            kept = merged.get(doc.id)
            if kept is None:
                merged[doc.id] = dataclasses.replace(doc, scores=dict(doc.scores))
                continue
            for arm in ARMS:
                score = doc.scores.get(arm)
                if score is not None and (arm not in kept.scores or score.sort_key() < kept.scores[arm].sort_key()):
                    kept.scores[arm] = score
    return list(merged.values())


def arm_lists(candidates: Iterable[Document], depth: int) -> tuple[ArmList, ...]:
    """Per arm (in :data:`ARMS` order), the candidates carrying its score, best first, ties by id, cut to
    ``depth``.

    :raises ConfigError: if one arm's scores mix distances and similarities (they would not sort).
    """
    candidates = list(candidates)
    result = []
    for arm in ARMS:
        scored = sorted(((doc.scores[arm], doc.id) for doc in candidates if arm in doc.scores),
                        key=lambda pair: (pair[0].sort_key(), pair[1]))[:depth]
        if len({score.direction for score, _ in scored}) > 1:
            raise ConfigError(f"fusion: the {arm} arm's scores mix distance and similarity")
        result.append(ArmList(arm, tuple(doc_id for _, doc_id in scored), tuple(score for score, _ in scored)))
    return tuple(result)


def rrf(lists: Sequence[ArmList], k: int) -> dict[str, float]:
    """Reciprocal rank fusion: ``sum over arms of 1 / (k + rank)``, rank from 1 (Cormack et al. 2009)."""
    return _sum(lists, [[1.0 / (k + rank) for rank in range(1, len(arm.ids) + 1)] for arm in lists])


def dbsf(lists: Sequence[ArmList]) -> dict[str, float]:
    """Distribution-based score fusion, Qdrant's ``distr_norm``: per arm ``(x - (m - 3s)) / 6s`` with m the
    mean and s the sample standard deviation of the arm's list (0.5 for one score or equal scores, no
    clipping), summed over arms."""
    normalised = []
    for arm in lists:
        values = arm.values()
        if len(values) < 2:
            normalised.append([0.5] * len(values))
            continue
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
        normalised.append(_rescale(values, mean - 3 * std, mean + 3 * std, flat=0.5))
    return _sum(lists, normalised)


def linear(lists: Sequence[ArmList], dense_weight: float) -> dict[str, float]:
    """``w * minmax(dense) + (1 - w) * minmax(lexical)``, min-max over each arm's list (1 when its scores
    are all equal)."""
    weights = {DENSE_ARM: dense_weight, LEXICAL_ARM: 1.0 - dense_weight}
    normalised = []
    for arm in lists:
        values = arm.values()
        normalised.append([weights[arm.arm] * v for v in _rescale(values, min(values, default=0.0),
                                                                    max(values, default=0.0), flat=1.0)])
    return _sum(lists, normalised)


_FUSERS: Mapping[str, Callable[[Sequence[ArmList], FusionConfig], dict[str, float]]] = {
    "rrf": lambda lists, config: rrf(lists, config.rrf_k),
    "dbsf": lambda lists, config: dbsf(lists),
    "linear": lambda lists, config: linear(lists, config.dense_weight),
}
"""Each method of :data:`FUSIONS` (a test checks they are the same names)."""


def fuse(candidates: Sequence[Document], config: FusionConfig, top_k: int) -> list[Document]:
    """One query's candidates fused and ranked.

    :param candidates: the query's matches, each document once (:func:`merge_candidates`), with arm scores.
    :param top_k: matches kept.
    :returns: the documents of the arms' global lists, by fused score (larger first) then id, at most
        ``top_k``; each with ``score`` = the fused score (a similarity named ``fusion.<method>``), its arm
        scores where it is in that arm's list (others dropped: with one shard it would not carry them)
        and its rank there (:func:`rank_name`).
    """
    lists = arm_lists(candidates, config.depth)
    fused = _FUSERS[config.method](lists, config)
    ranks = {arm.arm: {doc_id: rank for rank, doc_id in enumerate(arm.ids, start=1)} for arm in lists}
    by_id = {doc.id: doc for doc in candidates}
    best = sorted(fused, key=lambda doc_id: (-fused[doc_id], doc_id))[:top_k]
    return [_fused_match(by_id[doc_id], Score(fused[doc_id], f"fusion.{config.method}", Direction.SIMILARITY), ranks)
            for doc_id in best]


def _fused_match(doc: Document, score: Score, ranks: Mapping[str, Mapping[str, int]]) -> Document:
    scores = {name: value for name, value in doc.scores.items() if name not in (SCORE_NAME, *ARMS)}
    for arm, ranked in ranks.items():
        if doc.id in ranked:
            scores[arm] = doc.scores[arm]
            scores[rank_name(arm)] = Score(float(ranked[doc.id]), "fusion.rank", Direction.DISTANCE)
    scores[SCORE_NAME] = score
    return dataclasses.replace(doc, scores=scores)


def _rescale(values: Sequence[float], low: float, high: float, *, flat: float) -> list[float]:
    """``(v - low) / (high - low)`` for each value; ``flat`` for all when ``high == low``."""
    if high == low:
        return [flat] * len(values)
    return [(v - low) / (high - low) for v in values]


def _sum(lists: Sequence[ArmList], contributions: Sequence[Sequence[float]]) -> dict[str, float]:
    """Per document, the sum of its arms' contributions, added in :data:`ARMS` order."""
    total: dict[str, float] = {}
    for arm, values in zip(lists, contributions):
        for doc_id, value in zip(arm.ids, values):
            total[doc_id] = total.get(doc_id, 0.0) + value
    return total
