"""From vector ids back to documents: whose node each vector is, and a search's rows of (scores, ids) as hits.

A vector is one embedded node of a root document, named by its path in the tree ('' for the root, 'c3.c1'
below); the root documents are in RocksDB (``store.py``), the owners of the vectors in memory, derived
from the stored ones when the shard opens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from processors.document import Direction, Document, Score
from processors.index.base import Hit, SearchTuning, VectorIndex
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.store import Owner, ShardStore

__all__ = ["Planned", "VectorOwners", "embedded_nodes", "node_at", "row_hits", "search_past_ties"]

Planned = list[tuple[Document, list[tuple[str, Document]]]]
"""Upserted documents, each with its embedded nodes and their paths."""


class VectorOwners:
    """Whose node each vector is, and which field's, for field-restricted search."""

    def __init__(self) -> None:
        self._by_vid: dict[int, Owner] = {}
        self._by_field: dict[str, set[int]] = {}

    def add(self, owners: Iterable[tuple[int, Owner]]) -> None:
        """Record whose node each vector is, and which field's."""
        for vid, owner in owners:
            self._by_vid[vid] = owner
            self._by_field.setdefault(owner[2], set()).add(vid)

    def remove(self, vids: Iterable[int]) -> None:
        """Forget these vectors; ids never recorded are skipped."""
        for vid in vids:
            owner = self._by_vid.pop(vid, None)
            if owner is not None:
                self._by_field.get(owner[2], set()).discard(vid)

    def get(self, vid: int) -> Owner | None:
        """The owner of this vector, or None for one removed (or never added)."""
        return self._by_vid.get(vid)

    def field_of(self, vid: int) -> str:
        """The ``field_name`` of this vector's node ('' for none); the vector must be recorded."""
        return self._by_vid[vid][2]

    def of_fields(self, fields: Sequence[str]) -> np.ndarray:
        """The ids of the vectors of nodes with one of these field names, ascending."""
        vids = set().union(*(self._by_field.get(name, set()) for name in fields))
        return np.fromiter(sorted(vids), dtype=np.int64, count=len(vids))


def row_hits(op_name: str, direction: Direction, row_scores: np.ndarray, row_ids: np.ndarray, top_k: int, *,
             owners: VectorOwners, store: ShardStore, roots: dict[str, Document | None],
             vectors: FlatVectorIndex | None = None) -> list[Hit]:
    """One query's hits from its row of ids and scores: owners looked up, ties cut by document id,
    ``top_k`` kept. Each hit reads its document when a ranker asks for it (``Hit.deferred``): the owners say
    whose node a vector is without reading; a document gone from the store leaves its hit not ``held``.

    :param roots: the root documents read so far for this search, shared by its queries.
    :param vectors: give each hit's node its vector from this index (the exact one, which holds every one);
        None: nodes have none.
    """
    found = [(Score(float(value), op_name, direction), owner, int(vid))
             for value, vid in zip(row_scores, row_ids)
             if (owner := owners.get(int(vid))) is not None]
    # Equal scores in document id order, then node path: never in the order vectors were added.
    found.sort(key=lambda hit: (hit[0].sort_key(), hit[1][0], hit[1][1]))
    return [Hit.deferred(doc_id, score, functools.partial(_read_hit, doc_id, path, score, vid, store, roots, vectors))
            for score, (doc_id, path, _), vid in found[:top_k]]


def _read_hit(doc_id: str, path: str, score: Score, vid: int, store: ShardStore, roots: dict[str, Document | None],
              vectors: FlatVectorIndex | None) -> tuple[Document, Document] | None:
    """A hit's root document (read once per search) and a copy of its node alone, scored; None if it is gone."""
    if doc_id not in roots:
        roots[doc_id] = store.document(doc_id)
    root = roots[doc_id]
    if root is None:
        return None
    node = node_at(root, path)
    node = dataclasses.replace(node, chunks=[], matches=[], tags=dict(node.tags), location=list(node.location),
                               scores={**node.scores, "score": score})
    if vectors is not None:
        node.embedding = vectors.vectors(np.array([vid], dtype=np.int64))[0]
    return root, node


def search_past_ties(index: VectorIndex, queries: np.ndarray, top_k: int, tuning: SearchTuning,
                     available: int) -> tuple[np.ndarray, np.ndarray]:
    """The index's ``top_k`` per query, widened past any run of equal scores at the cut.

    Which of several tied vectors FAISS keeps depends on the order they were added, which a
    replay or a rebalance changes; with the whole run fetched, the caller cuts it by document id.
    One vector beyond the cut shows whether a run crosses it, so an untied search (the common
    case) is one FAISS call; a tied one doubles its width until the run ends.
    """
    k = min(top_k + 1, available)
    while True:
        scores, ids = index.search(queries, k, tuning)
        if k >= available or ids.shape[1] < k or not _tied_past_cut(scores, ids, top_k):
            return scores, ids
        k = min(2 * k, available)


def _tied_past_cut(scores: np.ndarray, ids: np.ndarray, top_k: int) -> bool:
    """True if a row's last hit, beyond position ``top_k``, scores what its ``top_k``-th does: more may tie beyond.

    :param scores: (queries, k) with k > ``top_k``; rows padded with id -1 where the index ran out.
    """
    last = ids.shape[1] - 1
    if last < top_k:
        return False
    return bool(np.any((ids[:, last] != -1) & (scores[:, top_k - 1] == scores[:, last])))


def embedded_nodes(doc: Document, path: str = "") -> Iterator[tuple[str, Document]]:
    """Every node with an embedding, with its path: '' for the root, 'c3.c1' below."""
    if doc.embedding is not None:
        yield path, doc
    for i, chunk in enumerate(doc.chunks):
        yield from embedded_nodes(chunk, f"{path}.c{i}" if path else f"c{i}")


def node_at(root: Document, path: str) -> Document:
    """The node at this path ('' for the root, 'c3.c1' below)."""
    node = root
    for step in path.split(".") if path else []:
        node = node.chunks[int(step[1:])]
    return node
