"""The filterable fields inside a shard: each document's values stored with it in RocksDB, indexed by
vector id in memory (``scalar.py``, which knows no store), and rebuilt from the stored values on open.

Which tags are filterable, and as what type, is the config's ``filterable`` declaration; values stored
for another declaration are extracted again from the stored documents when the shard opens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from processors.document import Document
from processors.index.hits import Planned
from processors.index.scalar import FieldValues, ScalarIndex
from processors.index.store import Owner, ShardStore, ShardWrite
from processors.query.filter import FieldSchema, Filter, check_filter, stored_values

__all__ = ["FieldIndexes", "StagedFields"]

logger = logging.getLogger(__name__)

StagedFields = list[tuple[list[int], FieldValues]]
"""Upserted documents' vector ids, each with the document's filterable values."""


class FieldIndexes:
    """One shard's field indexes: the filterable values of its documents, stored and indexed.

    :param schema: the declared filterable fields and their types (none: nothing is kept).
    :param store: the shard's store, which holds the values with the documents.
    """

    def __init__(self, schema: FieldSchema, store: ShardStore) -> None:
        self.schema = schema
        self._store = store
        self.reset()

    @property
    def enabled(self) -> bool:
        """Whether any field is declared filterable."""
        return bool(self.schema)

    def reset(self) -> None:
        """Forget the index (derived from RocksDB)."""
        self._scalars = ScalarIndex(self.schema)

    def open(self, owners: Sequence[Owner], ids: np.ndarray) -> None:
        """Build the field indexes from the stored values; first extract them from the stored documents
        when the shard's were stored for another declaration (or none), or clear them when none is declared."""
        schema = dict(self.schema)
        if (self._store.filterable or {}) != schema:
            started = time.perf_counter()
            values = [(doc_id, self.values_of(doc)) for doc_id in self._store.doc_ids()
                      if schema and (doc := self._store.document(doc_id)) is not None]
            self._store.replace_field_values(values, schema)
            logger.info("field index values extracted from the stored documents", extra={
                "path": str(self._store.path), "documents": len(values),
                "seconds": round(time.perf_counter() - started, 3)})
        if not schema:
            return
        stored = dict(self._store.field_values())
        start = 0
        vids = ids.tolist()
        for end in range(1, len(vids) + 1):  # a document's vectors have consecutive ids
            if end == len(vids) or owners[end][0] != owners[start][0]:
                self._scalars.add(vids[start:end], stored.get(owners[start][0], {}))
                start = end

    def values_of(self, doc: Document) -> FieldValues:
        """The root document's filterable tag values, in the stored form; tags that fit no declared type
        are left out (not filterable), as are undeclared ones."""
        tags = doc.tags or {}
        return {name: kept for name, kind in self.schema.items()
                if name in tags and (kept := stored_values(kind, tags[name]))}

    def stage(self, write: ShardWrite, planned: Planned, first_vid: int) -> StagedFields:
        """Stage each upserted document's filterable values; returns its vector ids with them. The write gives
        each document's vectors consecutive ids in this order, from ``first_vid`` on (``staging.stage_vectors``)."""
        if not self.schema:
            return []
        staged, vid = [], first_vid
        for doc, nodes in planned:
            values = self.values_of(doc)
            write.put_field_values(doc.id, values)
            staged.append((list(range(vid, vid + len(nodes))), values))
            vid += len(nodes)
        return staged

    def follow(self, removed_vids: Sequence[int], staged: StagedFields) -> None:
        """The index follows a committed write: the removed vectors out, the new ones in."""
        self._scalars.remove(removed_vids)
        for vids, values in staged:
            self._scalars.add(vids, values)

    def select(self, filter: Filter) -> np.ndarray:
        """The ids of the vectors of documents the filter accepts, ascending.

        :raises InvalidParameterError: for a filter on a field not declared filterable.
        """
        check_filter(filter, self.schema)
        return self._scalars.select(filter)
