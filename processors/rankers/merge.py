"""Merging ranked lists from several shards into one, as the joiner does."""

from __future__ import annotations

from typing import Iterable, Sequence

from processors.document import Document
from processors.rankers.base import rank_key

__all__ = ["merge_matches"]


def merge_matches(lists: Iterable[Sequence[Document]], top_k: int) -> list[Document]:
    """One best-first list of at most ``top_k`` matches; a document seen twice keeps its best.

    A shard owns each document, so duplicates only appear while a partition moves between
    processes; keeping the best copy makes the merge idempotent.
    """
    best: dict[str, Document] = {}
    for matches in lists:
        for doc in matches:
            kept = best.get(doc.id)
            if kept is None or rank_key(doc) < rank_key(kept):
                best[doc.id] = doc
    return sorted(best.values(), key=rank_key)[:top_k]
