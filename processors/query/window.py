"""The index stage's answer to a query: nearest vectors ranked to documents, then the stage's
operations, with the vector window widened until ``top_k`` documents pass.

A shard first reads ``top_k × chunk_oversample`` nearest vectors per query. When fewer than
``top_k`` documents come out of them (a selective tag filter, documents with many matching
chunks), it reads twice as many, and so on, until ``top_k`` pass, the shard has no more vectors,
or the request has read ``max_vectors`` from this shard: then the result says so, never silently.
Each window is a prefix of one order (score, then document id and node path, ties at the cut
fetched whole by the index), so widening gives the same answer on every replay.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from processors.document import Document
from processors.exceptions import ConfigError
from processors.index.base import Hit
from processors.query.operators import Operation, apply_operations
from processors.rankers.base import Ranker

__all__ = ["MAX_WINDOW_VECTORS", "HitSource", "SearchRows", "WindowedSearchConfig", "WindowedSearch", "WindowResult"]

logger = logging.getLogger(__name__)

MAX_WINDOW_VECTORS = 20_000
"""Vectors one request may read from one shard while widening (over its queries and rounds);
the first window, ``top_k × chunk_oversample`` per query, is always read. Reading a vector's
hit costs about 65 µs (its document from RocksDB), so the limit keeps a request near 1 s."""


class HitSource(Protocol):
    """What the window searches: a shard index (``CompoundIndexer``)."""

    def search(self, *, embeddings: np.ndarray, top_k: int, **options: Any) -> list[list[Hit]]: ...


SearchRows = Callable[[Sequence[int], int], list[list[Hit]]]
"""One arm of a shard's search: (rows of the queries, hits wanted per query) -> each row's hits, best
first, fewer only when the shard holds no more. The dense arm is ``HitSource.search``; the lexical
arm ``CompoundIndexer.search_lexical``."""


@dataclass(frozen=True, slots=True)
class WindowedSearchConfig:
    """How far a shard may widen its window for one request.

    :param max_vectors: vectors one request may read from the shard while widening.
    """

    max_vectors: int = MAX_WINDOW_VECTORS

    def __post_init__(self) -> None:
        if self.max_vectors < 1:
            raise ConfigError(f"WindowedSearch: max_vectors must be positive, got {self.max_vectors}")


@dataclass(frozen=True, slots=True)
class WindowResult:
    """The query documents with their matches, and how the window ended.

    :param docs: the query documents (embeddings dropped), each with at most ``top_k`` matches,
        after the operations.
    :param vectors_read: vectors read from the index over every round.
    :param limited: ids of the queries whose window stopped at ``max_vectors`` with fewer than
        ``top_k`` documents passing, while the shard held more vectors.
    """

    docs: tuple[Document, ...]
    vectors_read: int
    limited: tuple[str, ...] = ()


class WindowedSearch:
    """Ranks a shard's nearest vectors to documents and applies the index stage's operations,
    widening the window until ``top_k`` documents pass."""

    def __init__(self, config: WindowedSearchConfig | None = None, *, ranker: Ranker) -> None:
        self.config = config or WindowedSearchConfig()
        self._ranker = ranker

    def warm_up(self) -> None:
        """Nothing to load."""

    def run(self, *, index: HitSource, queries: Sequence[Document], top_k: int, chunk_oversample: int,
            operations: Sequence[Operation] = (), search_options: dict[str, Any] | None = None) -> WindowResult:
        """Each query's ``top_k`` documents from this shard.

        :param index: the shard index; its ``search`` returns at most ``top_k`` hits per query,
            fewer only when it holds no more.
        :param queries: query documents, each with its embedding.
        :param top_k: documents wanted per query.
        :param chunk_oversample: vectors in the first window per wanted document.
        :param operations: the index stage's query language, run on the ranked documents.
        :param search_options: passed to ``index.search`` (index type, fields).
        :returns: the query documents with their matches, and whether a window hit the limit.
        """
        embeddings = np.stack([np.asarray(doc.embedding, dtype=np.float32).reshape(-1) for doc in queries])
        options = search_options or {}

        def nearest(rows: Sequence[int], window: int) -> list[list[Hit]]:
            return index.search(embeddings=embeddings[list(rows)], top_k=window, **options)

        return self.run_arm(nearest, queries=queries, top_k=top_k, chunk_oversample=chunk_oversample,
                            operations=operations)

    def run_arm(self, search: SearchRows, *, queries: Sequence[Document], top_k: int, chunk_oversample: int,
                operations: Sequence[Operation] = ()) -> WindowResult:
        """:meth:`run` for any arm: ``search`` gives the hits of a window (``SearchRows``)."""
        filtering = any(operation.operator == "filter" for operation in operations)
        answers: list[Document] = [dataclasses.replace(doc, embedding=None, matches=[]) for doc in queries]
        pending = list(range(len(queries)))
        window = top_k * chunk_oversample
        read, first, limited = 0, True, []
        while pending:
            if not first and read + window * len(pending) > self.config.max_vectors:
                limited = pending
                break
            hits = search(pending, window)
            read += sum(len(row) for row in hits)
            # Without operations the window's answer is the ranker's top_k; with them, every document it found
            # (a filter passes some, and the next ones fill in).
            depth = top_k if not operations else max(1, max(len(row) for row in hits))
            ranked = self._ranker.run(hits=hits, top_k=depth).matches
            still = []
            for row, row_hits, matches in zip(pending, hits, ranked):
                answers[row] = dataclasses.replace(answers[row], matches=list(matches))
                exhausted = len(row_hits) < window
                if not exhausted and not self._enough(answers[row], top_k, operations, filtering):
                    still.append(row)
            pending, window, first = still, window * 2, False
        docs = apply_operations(answers, operations) if operations else answers
        ids = tuple(answers[row].id for row in limited)
        if ids:
            logger.warning("index-stage window limit reached: %d vectors read, fewer than top_k=%d documents passed "
                           "for queries %s", read, top_k, ", ".join(ids))
        return WindowResult(docs=tuple(dataclasses.replace(doc, matches=doc.matches[:top_k]) for doc in docs),
                            vectors_read=read, limited=ids)

    @staticmethod
    def _enough(answer: Document, top_k: int, operations: Sequence[Operation], filtering: bool) -> bool:
        """True when ``top_k`` documents are ranked and, with a filter, ``top_k`` pass the operations."""
        if len(answer.matches) < top_k:
            return False
        if not filtering:
            return True  # the other operators keep or drop documents regardless of which ones they are
        passed = apply_operations([answer], operations)
        return not passed or len(passed[0].matches) >= top_k
