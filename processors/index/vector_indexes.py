"""A shard's FAISS indexes: derived from its stored vectors, never stored themselves.

The exact (flat) index is always kept, and hands back stored vectors; every other type (``types.py``)
is built from the stored vectors in RocksDB when first asked for, and then follows every write, like
the exact one. A type the shard holds too few vectors to train is answered by the exact index meanwhile.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from processors.index.base import VectorIndex
from processors.index.config import CompoundIndexerConfig
from processors.index.faiss_flat import FlatVectorIndex
from processors.index.store import ShardStore
from processors.index.types import EXACT, INDEX_TYPES, VECTOR_INDEX_TYPES, IndexInputs

__all__ = ["VectorIndexes"]

logger = logging.getLogger(__name__)

_NO_VECTORS = np.empty((0, 0), np.float32)
"""What the exact index trains on: nothing."""


class VectorIndexes:
    """One shard's FAISS indexes, by index type name.

    :param store: the shard's store, whose vectors an index type is built from.
    """

    def __init__(self, config: CompoundIndexerConfig, store: ShardStore) -> None:
        self.config = config
        self._store = store
        self.reset()

    def reset(self) -> None:
        """Forget every index (derived from RocksDB): an empty exact one, no other."""
        exact = EXACT.build(self._inputs(_NO_VECTORS))
        assert isinstance(exact, FlatVectorIndex)  # it hands back stored vectors (``with_vectors``)
        self.exact: FlatVectorIndex = exact
        self._approximate: dict[str, VectorIndex] = {}
        self._untrainable: set[str] = set()
        self._deferred: _Deferred | None = None

    def _inputs(self, training: np.ndarray) -> IndexInputs:
        return IndexInputs(self.config, training, source=self._store.vectors_of)

    def built(self) -> tuple[str, ...]:
        """The index types built now, in ``INDEX_TYPES`` order."""
        return tuple(name for name in INDEX_TYPES if name == EXACT.name or name in self._approximate)

    def index_for(self, index_type: str, stored: tuple[np.ndarray, np.ndarray] | None = None) -> VectorIndex:
        """The index of this type, built now from the stored vectors if need be; flat while untrainable.

        :param stored: the stored (ids, vectors) when the caller holds them already.
        """
        if index_type == EXACT.name:
            return self.exact
        built = self._approximate.get(index_type)
        if built is not None:
            return built
        row = VECTOR_INDEX_TYPES[index_type]
        needed = row.training_size(self.config)
        if self.exact.size < needed:
            if index_type not in self._untrainable:
                self._untrainable.add(index_type)
                logger.warning("%s needs %d vectors to train, the shard holds %d: flat answers until then",
                               index_type, needed, self.exact.size)
            return self.exact
        started = time.perf_counter()
        ids, vectors = stored if stored is not None else self._store.vectors()[:2]
        index = row.build(self._inputs(vectors))
        index.add(ids, vectors)
        self._approximate[index_type] = index
        self._untrainable.discard(index_type)
        logger.info("%s index built from %d stored vectors in %.2f s", index_type, len(ids),
                    time.perf_counter() - started, extra={"path": str(self._store.path)})
        return index

    def follow(self, gone: np.ndarray, added: np.ndarray, added_vectors: np.ndarray) -> int:
        """Every built index follows a committed write; returns how many vectors were removed.
        Call :meth:`refresh` after. While adds are deferred (:meth:`defer_adds`), vectors wait to be added."""
        removed = 0
        if self._deferred is not None:
            removed, gone = self._deferred.remove(gone)
            self._deferred.add(added, added_vectors)
        removed += self.exact.remove(gone)
        if self._deferred is None:
            self._add(added, added_vectors)
        for index in self._approximate.values():
            index.remove(gone)
        return removed

    def defer_adds(self) -> None:
        """Hold added vectors back until :meth:`add_deferred`, then add them in one call: a rebuild from the
        topic (replay) adds in batches of a few thousand, and FAISS's growing storage copied and faulted in
        its pages again at every growth (100,000 384-d vectors: 0.29 s in batches of 500, 0.14 s in one).
        Searches meanwhile do not see them."""
        if self._deferred is None:
            self._deferred = _Deferred()

    def add_deferred(self) -> None:
        """Add what :meth:`defer_adds` held back, in one call; call :meth:`refresh` after."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            self._add(*deferred.kept(self.config.dim))

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.exact.add(ids, vectors)
        for index in self._approximate.values():
            index.add(ids, vectors)

    def refresh(self) -> None:
        """After a write: rebuild the indexes that drifted from the data, and build the default once it can be."""
        for name in [name for name, index in self._approximate.items() if index.needs_rebuild]:
            del self._approximate[name]
            self.index_for(name)
        self.index_for(self.config.index_type)


class _Deferred:
    """Vectors added while adds are deferred, and the ids among them removed since."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._vectors: list[np.ndarray] = []
        self._held: set[int] = set()
        self._dropped: set[int] = set()
        """Held ids removed again (a later version of their document came): never added."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._ids.append(ids)
            self._vectors.append(vectors)
            self._held.update(ids.tolist())

    def remove(self, gone: np.ndarray) -> tuple[int, np.ndarray]:
        """Drop the held ids among ``gone``; returns how many were held, and the others (for the indexes)."""
        if not self._held or not len(gone):
            return 0, gone
        held = np.fromiter((vid in self._held for vid in gone.tolist()), dtype=bool, count=len(gone))
        dropped = set(gone[held].tolist())
        self._held -= dropped
        self._dropped |= dropped
        return len(dropped), gone[~held]

    def kept(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The held ids and vectors not dropped, in the order added (one copy of them; the held pieces are let go)."""
        if not self._ids:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        ids, vectors = np.concatenate(self._ids), np.concatenate(self._vectors)
        self._ids.clear()
        self._vectors.clear()
        if not self._dropped:
            return ids, vectors
        keep = ~np.isin(ids, np.fromiter(self._dropped, dtype=np.int64, count=len(self._dropped)))
        return ids[keep], vectors[keep]
